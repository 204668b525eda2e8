"""Arguments of `MagnitudePruningCallback`, checked before training starts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SCHEDULES = ("one_shot", "linear", "cubic", "imp")
STRUCTURES = ("unstructured", "neurons", "heads")
SCOPES = ("global", "layer")
CRITERIA = ("magnitude", "activation")


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
    structure: str = field(default="unstructured", metadata={"help": "unstructured, neurons (FFN) or heads."})
    scope: str | None = field(
        default=None,
        metadata={"help": "global (one threshold over all targets) or layer (the same fraction everywhere). "
                          "Defaults to global for unstructured and layer for neurons/heads, which compact."},
    )
    criterion: str = field(
        default="magnitude",
        metadata={"help": "How structured units are ranked: magnitude (L1 norm of their weights) or activation "
                          "(importance measured on calibration data, Minitron; pass importance= to the callback)."},
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
            if not 0.0 <= self.target_sparsity < 1.0:
                raise ValueError(
                    f"target_sparsity={self.target_sparsity} is outside [0, 1): pass the fraction to prune, "
                    "e.g. 0.5 for half of the weights."
                )
        if not 0.0 <= self.initial_sparsity <= (self.target_sparsity or 0.0):
            raise ValueError(
                f"initial_sparsity={self.initial_sparsity} must be in [0, target_sparsity={self.target_sparsity}]."
            )
        for name, allowed in (("schedule", SCHEDULES), ("structure", STRUCTURES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported: choose one of {allowed}.")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion={self.criterion!r} is not supported: choose one of {CRITERIA}.")
        if self.criterion == "activation" and self.structure == "unstructured":
            raise ValueError("criterion='activation' ranks FFN neurons or heads: use structure='neurons' or 'heads'.")
        if self.scope is None:
            self.scope = "global" if self.structure == "unstructured" else "layer"
        if self.scope not in SCOPES:
            raise ValueError(f"scope={self.scope!r} is not supported: choose one of {SCOPES}.")
        if self.schedule == "imp" and self.structure != "unstructured":
            raise ValueError("schedule='imp' prunes unstructured weights; use structure='unstructured'.")
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

    def to_dict(self) -> dict:
        return asdict(self)
