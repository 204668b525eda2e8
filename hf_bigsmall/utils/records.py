"""`ConfigRecord`: a typed record of one step, kept as one block of a saved model's `config.json`.

Each step of the kit that changes a model (distillation, pruning, width pruning, vocabulary trimming,
quantization, teacher correction) says what it did in one block of `config.json`, under its own key
(`distillation`, `sparsity`, ...). Its record class, beside the step's code, reads the block back
(`from_config`), writes it (`write`) and renders the model card's section about it (`card_section`).

The block on disk is the record's `to_dict()`: the keys read keep their order and presence (a key
written as `null` stays), keys this version does not know are kept as they are, and the model card
lists settings in the order they are stored, so folders written before these classes existed load and
describe themselves unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

_Record = TypeVar("_Record", bound="ConfigRecord")

# fields of the base class, not keys of a block
_OWN_FIELDS = ("extra", "stored_keys")


@dataclasses.dataclass
class ConfigRecord:
    """Base of the kit's step records: one typed field per key of the block, anything else in `extra`.

    Subclasses set `KEY` (the block's key in `config.json`), declare their keys as dataclass fields,
    may name a field differently from its key (`DISK_NAMES`, e.g. `{"source": "from"}`), and may hold
    nested records (`NESTED`, field name -> record class).

    Example:

    ```python
    >>> @dataclasses.dataclass
    ... class MergeRecord(ConfigRecord):
    ...     KEY = "merge"
    ...     method: str | None = None
    >>> record = MergeRecord.from_dict({"method": "ties", "density": 0.5})
    >>> record.method, record.extra, record.to_dict()
    ('ties', {'density': 0.5}, {'method': 'ties', 'density': 0.5})
    >>> record.write(model.config)  # config.json gets {"merge": {"method": "ties", "density": 0.5}}
    ```
    """

    KEY: ClassVar[str] = ""
    DISK_NAMES: ClassVar[dict[str, str]] = {}
    NESTED: ClassVar[dict[str, type[ConfigRecord]]] = {}

    #: keys of the block this version does not know, kept as they were
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, kw_only=True)
    #: the keys of the block as it was read, in their order (empty for a record made in code)
    stored_keys: tuple[str, ...] = dataclasses.field(default=(), kw_only=True, repr=False, compare=False)

    @classmethod
    def _names(cls) -> dict[str, str]:
        """key on disk -> field name, for every declared field."""
        return {cls.DISK_NAMES.get(f.name, f.name): f.name for f in dataclasses.fields(cls) if f.name not in _OWN_FIELDS}

    @classmethod
    def from_dict(cls: type[_Record], block: dict[str, Any]) -> _Record:
        """The record of a block as stored in `config.json`."""
        if not isinstance(block, dict):
            raise TypeError(f"the {cls.KEY!r} block of config.json must be a JSON object, got {type(block).__name__}: "
                            f"remove it or write it as the kit does.")
        names, known, extra = cls._names(), {}, {}
        for key, value in block.items():
            name = names.get(key)
            nested = cls.NESTED.get(name) if name else None
            if name is None or (nested is not None and not isinstance(value, dict)):
                extra[key] = value  # unknown, or a nested block that is not one: kept, not interpreted
            else:
                known[name] = nested.from_dict(value) if nested is not None else value
        return cls(**known, extra=extra, stored_keys=tuple(block))

    @classmethod
    def from_config(cls: type[_Record], config: Any) -> _Record | None:
        """The record in a model config (a `PretrainedConfig` or the dict of `config.json`), or None without one."""
        block = config.get(cls.KEY) if isinstance(config, dict) else getattr(config, cls.KEY, None)
        return cls.from_dict(block) if isinstance(block, dict) else None

    def to_dict(self) -> dict[str, Any]:
        """The block as `config.json` stores it: the keys read first, in order; set fields and unknown keys after."""
        known = {key: getattr(self, name) for key, name in self._names().items()}
        order = list(self.stored_keys)
        order += [key for key, value in known.items() if key not in order and value is not None]
        order += [key for key in self.extra if key not in order]
        block: dict[str, Any] = {}
        for key in order:
            if key in known and (known[key] is not None or key not in self.extra):
                value = known[key]
                block[key] = value.to_dict() if isinstance(value, ConfigRecord) else value
            elif key in self.extra:
                block[key] = self.extra[key]
        return block

    def write(self, config: Any) -> None:
        """Store the record in a model config (`config.<KEY>`, or `config[KEY]` for the dict of `config.json`)."""
        if isinstance(config, dict):
            config[self.KEY] = self.to_dict()
        else:
            setattr(config, self.KEY, self.to_dict())
