"""What a quantized folder is, and the checks every export makes before anything is written.

Which backend serves a request is the backends registry's business (`quantization/backends/`,
`plan.py`); this module is what every backend shares underneath it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..utils.files import (
    KIT_MARKER,
    NotReplaceableError,
    check_replaceable,
    is_kit_folder,
    leftover_match,
    publish_dir,
)

# key of the record that `quantize` adds to config.json (beside `distillation`, `sparsity`)
QUANTIZATION_KEY = "quantization"
ONNX_FILE = "model.onnx"


def quantization_of(model_dir: str | Path) -> dict[str, Any] | None:
    """How a saved folder is quantized: the kit's record, or a description of another quantizer's, or None."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    if config.get(QUANTIZATION_KEY):
        return config[QUANTIZATION_KEY]
    if config.get("quantization_config"):  # torchao, bitsandbytes, GPTQ, a GGUF import ...
        quant_method = config["quantization_config"].get("quant_method", "unknown")
        return {"method": quant_method, "backend": quant_method}
    if (model_dir / ONNX_FILE).is_file() or any(model_dir.glob("*.gguf")):
        return {"method": "unknown", "backend": "onnx" if (model_dir / ONNX_FILE).is_file() else "gguf"}
    return None


def check_full_precision_source(model_dir: str | Path) -> Path:
    """`model_dir` as a Path, once it is a saved model folder that is not quantized already.

    Raises:
        ValueError: no `config.json` there, or the folder holds a quantized model (quantizing it again
            would stack two roundings): the message says to give the full-precision folder.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir} is not a saved model folder (no config.json).")
    existing = quantization_of(model_dir)
    if existing is not None:
        raise ValueError(f"{model_dir} is already quantized ({existing.get('method')} with {existing.get('backend')}): "
                         "give the original full-precision folder instead.")
    return model_dir


def is_onnx_folder(model_dir: str | Path) -> bool:
    """True for a folder written by the ONNX Runtime backend (`model.onnx` beside `config.json`).

    A GenAI export also holds a `model.onnx`, but its graph takes a KV cache: `genai_config.json` tells it apart.
    """
    model_dir = Path(model_dir)
    return ((model_dir / ONNX_FILE).is_file() and (model_dir / "config.json").is_file()
            and not (model_dir / "genai_config.json").is_file())


def check_source_is_no_leftover(model_dir: str | Path, output_dir: str | Path) -> None:
    """Refuse a model folder at (or inside) a name an export to `output_dir` removes as a leftover.

    An export removes what interrupted exports to `output_dir` left beside it (`<output_dir>[.<writer>].partial`,
    `.<output_dir>[.<writer>].replaced`, `.<output_dir>.<writer>.genai`, ...; see
    `hf_bigsmall.utils.files.leftover_match`): a model at such a name could be deleted or moved.

    Raises:
        ValueError: the message names the folder and the fix. Nothing is changed.
    """
    source, target = Path(model_dir).resolve(), Path(output_dir).resolve()
    sibling = next((parent for parent in (source, *source.parents) if parent.parent == target.parent), None)
    if sibling is not None and leftover_match(target, sibling.name):
        raise ValueError(f"the model's folder {model_dir} is {sibling.name}, a name an export to {output_dir} "
                         "writes through and removes as a leftover: move or rename the model's folder first, or "
                         "pass another output_dir.")


def check_quantized_output(model_dir: str | Path, output_dir: str | Path) -> None:
    """Refuse an `output_dir` that an export may not write, before anything is written.

    Every backend that writes through the kit's `.partial` folders (ONNX Runtime, torchao, GGUF) follows one
    rule: only a folder the kit wrote *and* whose `config.json` carries a quantization record (an earlier
    quantized export) is replaced. A folder the kit wrote without that record is a trained model (a
    distilled or pruned student, a teacher) and is never replaced by an export of another model.

    Raises:
        ValueError: `output_dir` is `model_dir`, holds it or lies inside it, is a file or a link, or is a folder
            with something in it that is not a quantized folder the kit wrote; the message names it. Nothing is
            changed.
    """
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    source, target = model_dir.resolve(), output_dir.resolve()
    if target == source:
        raise ValueError(f"output_dir {output_dir} is the model's own folder: write the quantized model into a new "
                         "folder (the full-precision model stays as it is).")
    # replacing an earlier export removes the folder with all it holds: the model may not sit inside it, nor it
    # inside the model (its files would then change the model's folder)
    if source.is_relative_to(target) or target.is_relative_to(source):
        raise ValueError(f"output_dir {output_dir} and the model's folder {model_dir} are inside one another: write "
                         "the quantized model into a folder beside the model, not around or within it.")
    check_source_is_no_leftover(model_dir, output_dir)
    try:
        check_replaceable(output_dir, is_replaceable_export)  # a file or a link there is refused too
    except NotReplaceableError as error:
        raise _export_refusal(output_dir, error) from error


def is_replaceable_export(folder: Path) -> bool:
    """Whether a quantized export may replace the folder `folder`: an earlier quantized export the kit wrote.

    The kit's marker and the kit's quantization record: a GGUF file or another tool's model.onnx says nothing about
    who owns the rest of the folder, and the marker alone is on every model the kit saves. A folder holding the
    kit's marker alone, as an interrupted write leaves it, has nothing to lose.
    """
    return not any(path.name != KIT_MARKER for path in folder.iterdir()) or (
        is_kit_folder(folder) and has_kit_record(folder))


def _export_refusal(output_dir: Path, error: NotReplaceableError) -> ValueError:
    """The refusal of a folder at `output_dir` that is no earlier export, said as such (a file or a link: `error`)."""
    if output_dir.is_symlink() or not output_dir.is_dir():
        return error
    return ValueError(f"{output_dir} already exists and is not a quantized model folder written by hf_bigsmall: it "
                      "is left as it is, with everything in it. Choose another output_dir, or move or delete that "
                      "folder yourself (only a folder an earlier quantized export wrote is replaced).")


def publish_export(partial: Path, output_dir: Path) -> Path:
    """`publish_dir` for a quantized export: what stands at `output_dir` when it is renamed into place (minutes
    after `check_quantized_output`) is replaced only if it is an earlier export (`is_replaceable_export`).

    Raises:
        ValueError: `output_dir` holds something else now (a student saved there meanwhile, a file); it and
            `partial` are left as they are. FileExistsError: see `publish_dir`.
    """
    try:
        return publish_dir(partial, output_dir, is_replaceable_export)
    except NotReplaceableError as error:
        raise _export_refusal(output_dir, error) from error


def has_kit_record(folder: str | os.PathLike) -> bool:
    """Whether `folder/config.json` carries the kit's own quantization record."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get(QUANTIZATION_KEY), dict)
