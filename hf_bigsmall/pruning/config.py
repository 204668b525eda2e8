"""Arguments of `MagnitudePruningCallback`, checked before training starts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..utils.checks import check_finite
from .criteria import MULTI_PROCESS_FIX, get_pruning_criterion, pruning_criterion_names
from .patterns import PATTERN

SCHEDULES = ("one_shot", "linear", "cubic", "imp")
# and any "N:M" pattern such as "2:4": N pruned of every M consecutive input weights of a row
STRUCTURES = ("unstructured", "neurons", "heads")
# "row": every output row loses the same fraction (Wanda's comparison group; unstructured only)
SCOPES = ("global", "layer", "row")


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
        metadata={"help": "A registered pruning criterion (hf_bigsmall.pruning_criterion_names()): magnitude (|W|), "
                          "wanda (|W| x the input channel's activation norm on a calibration set, Sun et al. 2023; "
                          "needs calibration_dataset; unstructured and N:M only), activation (FFN neurons / heads "
                          "ranked by their activations on a calibration set, Minitron; needs importance= or "
                          "calibration_dataset; neurons and heads only), or one added with "
                          "register_pruning_criterion. Criteria that rewrite the kept weights (sparsegpt) are "
                          "one-shot only (prune_one_shot)."},
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
        for check in (_check_sparsities, _check_schedule, _check_structure, _check_criterion, _fill_scope,
                      _check_scope, _check_counts):
            check(self)
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)

    @property
    def pattern(self) -> tuple[int, int] | None:
        """`(N, M)` when `structure` is an N:M pattern, else None."""
        match = PATTERN.fullmatch(self.structure) if isinstance(self.structure, str) else None
        return (int(match.group(1)), int(match.group(2))) if match else None

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------- validators
def _check_sparsities(config: PruningConfig) -> None:
    # check_finite comes first: NaN compares false with everything, so range and N/M checks let it through
    if config.target_sparsity is not None:
        if isinstance(config.target_sparsity, bool) or not isinstance(config.target_sparsity, (int, float)):
            raise TypeError(f"target_sparsity must be a float in [0, 1), got {config.target_sparsity!r}.")
        check_finite("target_sparsity", config.target_sparsity, "in [0, 1)")
        if not 0.0 <= config.target_sparsity < 1.0:
            raise ValueError(
                f"target_sparsity={config.target_sparsity} is outside [0, 1): pass the fraction to prune, "
                "e.g. 0.5 for half of the weights."
            )
    check_finite("initial_sparsity", config.initial_sparsity, f"in [0, target_sparsity={config.target_sparsity}]")
    if not 0.0 <= config.initial_sparsity <= (config.target_sparsity or 0.0):
        raise ValueError(
            f"initial_sparsity={config.initial_sparsity} must be in [0, target_sparsity={config.target_sparsity}]."
        )


def _check_schedule(config: PruningConfig) -> None:
    if config.schedule not in SCHEDULES:
        raise ValueError(f"schedule={config.schedule!r} is not supported: choose one of {SCHEDULES}.")
    if config.schedule == "imp" and config.structure != "unstructured":
        raise ValueError("schedule='imp' prunes unstructured weights; use structure='unstructured'.")


def _check_structure(config: PruningConfig) -> None:
    pattern = config.pattern
    if pattern is None:
        if config.structure not in STRUCTURES:
            raise ValueError(f"structure={config.structure!r} is not supported: choose one of {STRUCTURES} or an "
                             "'N:M' pattern such as '2:4'.")
        return
    n, m = pattern
    if not 0 < n < m:
        raise ValueError(f"structure={config.structure!r} needs 0 < N < M (N pruned of every M weights), e.g. '2:4'.")
    if config.target_sparsity is not None and abs(config.target_sparsity - n / m) > 1e-9:
        raise ValueError(f"structure={config.structure!r} prunes {n}/{m} = {n / m:g} of the weights: pass "
                         f"target_sparsity={n / m:g} (or None to re-arm), not {config.target_sparsity}.")


def training_criterion_names() -> tuple[str, ...]:
    """Registered criteria a training schedule can use: all but those that rewrite the weights they keep."""
    return tuple(name for name in pruning_criterion_names() if not get_pruning_criterion(name).rewrites_weights)


def _check_criterion(config: PruningConfig) -> None:
    if config.criterion not in pruning_criterion_names():
        raise ValueError(f"criterion={config.criterion!r} is not supported: choose one of {training_criterion_names()}, "
                         "or register it with register_pruning_criterion(...) before building the config; "
                         f"{MULTI_PROCESS_FIX}.")
    criterion = get_pruning_criterion(config.criterion)
    if criterion.rewrites_weights:
        raise ValueError(f"criterion={config.criterion!r} rewrites the weights it keeps, which a training schedule "
                         f"cannot: prune once with prune_one_shot(method={config.criterion!r}), or choose one of "
                         f"{training_criterion_names()}.")
    if criterion.supports(config.structure, config.pattern):
        return
    if config.structure in ("neurons", "heads"):
        raise ValueError(f"criterion={config.criterion!r} scores single weights: use structure='unstructured' or an "
                         "'N:M' pattern, or criterion='magnitude' for neurons and heads.")
    raise ValueError(f"criterion={config.criterion!r} ranks {' or '.join(criterion.granularities)}, not "
                     f"structure={config.structure!r}: use structure=" + " or ".join(
                         repr("2:4" if value == "n:m" else value) for value in criterion.granularities) + ".")


def _fill_scope(config: PruningConfig) -> None:
    if config.scope is not None:
        return
    if config.structure == "unstructured":
        config.scope = get_pruning_criterion(config.criterion).default_scope or "global"
    else:
        config.scope = "layer"


def _check_scope(config: PruningConfig) -> None:
    if config.scope not in SCOPES:
        raise ValueError(f"scope={config.scope!r} is not supported: choose one of {SCOPES}.")
    if config.scope == "row" and config.structure in ("neurons", "heads"):
        raise ValueError("scope='row' compares the weights of each output row: use it with structure='unstructured'.")


def _check_counts(config: PruningConfig) -> None:
    if config.calibration_samples < 1:
        raise ValueError(f"calibration_samples must be >= 1, got {config.calibration_samples}.")
    for name in ("start_step", "rewind_step"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(config, name)}.")
    for name in ("end_step", "pruning_frequency", "steps_per_round"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1 (or None for the default), got {value}.")
    if config.imp_rounds < 1:
        raise ValueError(f"imp_rounds must be >= 1, got {config.imp_rounds}.")
