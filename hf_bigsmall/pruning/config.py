"""Arguments of `MagnitudePruningCallback`, checked before training starts."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from ..utils.checks import check_finite

SCHEDULES = ("one_shot", "linear", "cubic", "imp")
# and any "N:M" pattern such as "2:4": N pruned of every M consecutive input weights of a row
STRUCTURES = ("unstructured", "neurons", "heads")
# "row": every output row loses the same fraction (Wanda's comparison group; unstructured only)
SCOPES = ("global", "layer", "row")
CRITERIA = ("magnitude", "wanda", "activation")
_PATTERN = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")


@dataclass
class PruningConfig:
    """What to prune, how much, and when. Every field is an argument of `MagnitudePruningCallback`.

    Example:

    ```python
    >>> from hf_bigsmall.pruning import PruningConfig
    >>> PruningConfig(target_sparsity=0.5, structure="neurons").scope  # structured defaults to per layer
    'layer'
    ```
    """

    target_sparsity: float | None = field(
        default=0.5,
        metadata={"help": "Final fraction pruned, in [0, 1): of the targeted weights (unstructured) or of the "
                          "FFN neurons / attention heads (structured). None keeps the masks the model already "
                          "carries (from a pruned checkpoint) and prunes nothing more."},
    )
    schedule: str = field(
        default="cubic",
        metadata={"help": "one_shot, linear, cubic (gradual magnitude pruning, Zhu & Gupta 2017) or imp "
                          "(iterative magnitude pruning with rewinding, Frankle & Carbin 2019)."},
    )
    structure: str = field(
        default="unstructured",
        metadata={"help": "unstructured, neurons (FFN), heads, or an N:M pattern such as 2:4 (N pruned of every M "
                          "consecutive input weights of a row; target_sparsity must then be N/M)."},
    )
    scope: str | None = field(
        default=None,
        metadata={"help": "global (one threshold over all targets), layer (the same fraction everywhere) or row "
                          "(the same fraction of every output row, unstructured only). Defaults to global for "
                          "unstructured magnitude, row for Wanda, layer for neurons/heads, which compact."},
    )
    criterion: str = field(
        default="magnitude",
        metadata={"help": "magnitude (|W|), wanda (|W| x the input channel's activation norm on a calibration "
                          "set, Sun et al. 2023; needs calibration_dataset; unstructured and N:M only) or activation "
                          "(FFN neurons / heads ranked by their activations on a calibration set, Minitron; needs "
                          "importance= or calibration_dataset; neurons and heads only)."},
    )
    calibration_samples: int = field(default=128, metadata={"help": "Wanda: calibration windows per pruning event."})
    calibration_seq_len: int | None = field(
        default=None, metadata={"help": "Wanda: tokens per calibration window (default 512 or the model's positions)."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module-name suffixes or a full-match regex; default: Linear/Conv1D layers inside "
                          "the transformer blocks (no embeddings, norms, biases, classifier or LM head)."},
    )
    initial_sparsity: float = field(default=0.0, metadata={"help": "s_i of the linear/cubic schedules."})
    start_step: int = field(default=0, metadata={"help": "First pruning step t_0 (0 prunes before training)."})
    end_step: int | None = field(
        default=None,
        metadata={"help": "Step at which the target is reached; default 3/4 of max_steps so the last quarter "
                          "fine-tunes with the final masks. Must not exceed max_steps."},
    )
    pruning_frequency: int | None = field(
        default=None, metadata={"help": "Steps between two pruning events (dt); default: 10 events over the ramp."}
    )
    imp_rounds: int = field(default=3, metadata={"help": "IMP: number of prune-and-rewind rounds."})
    rewind_step: int = field(
        default=0, metadata={"help": "IMP: rewind surviving weights to their values at this step (0 = init)."}
    )
    steps_per_round: int | None = field(
        default=None, metadata={"help": "IMP: training steps per round; default max_steps // (imp_rounds + 1)."}
    )
    imp_restart_lr: bool = field(
        default=True, metadata={"help": "IMP: restart the Trainer's learning-rate schedule (warmup and decay) in "
                                "every round, from the position of rewind_step, so each round trains alike."}
    )

    def __post_init__(self):
        if self.target_sparsity is not None:
            if isinstance(self.target_sparsity, bool) or not isinstance(self.target_sparsity, (int, float)):
                raise TypeError(f"target_sparsity must be a float in [0, 1), got {self.target_sparsity!r}.")
            check_finite("target_sparsity", self.target_sparsity, "in [0, 1)")
            if not 0.0 <= self.target_sparsity < 1.0:
                raise ValueError(
                    f"target_sparsity={self.target_sparsity} is outside [0, 1): pass the fraction to prune, "
                    "e.g. 0.5 for half of the weights."
                )
        check_finite("initial_sparsity", self.initial_sparsity, f"in [0, target_sparsity={self.target_sparsity}]")
        if not 0.0 <= self.initial_sparsity <= (self.target_sparsity or 0.0):
            raise ValueError(
                f"initial_sparsity={self.initial_sparsity} must be in [0, target_sparsity={self.target_sparsity}]."
            )
        for name, allowed in (("schedule", SCHEDULES), ("criterion", CRITERIA)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported: choose one of {allowed}.")
        if self.structure not in STRUCTURES and self.pattern is None:
            raise ValueError(f"structure={self.structure!r} is not supported: choose one of {STRUCTURES} or an "
                             "'N:M' pattern such as '2:4'.")
        if self.pattern is not None:
            n, m = self.pattern
            if not 0 < n < m:
                raise ValueError(f"structure={self.structure!r} needs 0 < N < M (N pruned of every M weights), e.g. '2:4'.")
            if self.target_sparsity is not None and abs(self.target_sparsity - n / m) > 1e-9:
                raise ValueError(f"structure={self.structure!r} prunes {n}/{m} = {n / m:g} of the weights: pass "
                                 f"target_sparsity={n / m:g} (or None to re-arm), not {self.target_sparsity}.")
        if self.criterion == "wanda" and self.structure in ("neurons", "heads"):
            raise ValueError("criterion='wanda' scores single weights: use structure='unstructured' or an 'N:M' "
                             "pattern, or criterion='magnitude' for neurons and heads.")
        if self.criterion == "activation" and self.structure not in ("neurons", "heads"):
            raise ValueError("criterion='activation' ranks FFN neurons or heads: use structure='neurons' or 'heads'.")
        if self.scope is None:
            if self.structure == "unstructured":
                self.scope = "row" if self.criterion == "wanda" else "global"
            else:
                self.scope = "layer"
        if self.scope not in SCOPES:
            raise ValueError(f"scope={self.scope!r} is not supported: choose one of {SCOPES}.")
        if self.scope == "row" and self.structure in ("neurons", "heads"):
            raise ValueError("scope='row' compares the weights of each output row: use it with structure='unstructured'.")
        if self.schedule == "imp" and self.structure != "unstructured":
            raise ValueError("schedule='imp' prunes unstructured weights; use structure='unstructured'.")
        if self.calibration_samples < 1:
            raise ValueError(f"calibration_samples must be >= 1, got {self.calibration_samples}.")
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        for name in ("start_step", "rewind_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        for name in ("end_step", "pruning_frequency", "steps_per_round"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or None for the default), got {value}.")
        if self.imp_rounds < 1:
            raise ValueError(f"imp_rounds must be >= 1, got {self.imp_rounds}.")

    @property
    def pattern(self) -> tuple[int, int] | None:
        """`(N, M)` when `structure` is an N:M pattern, else None."""
        match = _PATTERN.fullmatch(self.structure) if isinstance(self.structure, str) else None
        return (int(match.group(1)), int(match.group(2))) if match else None

    def to_dict(self) -> dict:
        return asdict(self)
