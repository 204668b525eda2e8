"""Configuration of a distillation run: `TrainingArguments` plus the loss settings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments
from transformers.utils import logging

from ..losses import HIDDEN_LOSSES
from ..utils.checks import check_finite
from ..utils.distributed import needs_cpu_process_group
from .cache import check_cache_folder
from .cached_loss import TAIL_MODELS
from .divergences import Divergence, resolve_divergence
from .fused_loss import FUSED_LOSS_BACKENDS
from .liger_loss import liger_setting_refusal, require_liger_kernel

logger = logging.get_logger(__name__)

TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class DistillationConfig(TrainingArguments):
    r"""
    [`~transformers.TrainingArguments`] for [`DistillationTrainer`].

    The training loss is a weighted sum of parts, each logged on its own (`loss_kd`, `loss_ce`,
    `loss_hidden`, `loss_attention`, unweighted):

    `loss = alpha_kd * kd + alpha_ce * ce + alpha_hidden * hidden + alpha_attention * attention`

    Example:

    ```python
    >>> from hf_bigsmall import DistillationConfig
    >>> config = DistillationConfig(output_dir="student", temperature=2.0, alpha_kd=0.5, alpha_ce=0.5)
    >>> config.kd_loss
    'forward_kl'
    ```
    """

    temperature: float = field(
        default=2.0,
        metadata={"help": "Softening temperature T > 0 of the soft-target loss; the loss is scaled by T**2."},
    )
    alpha_kd: float = field(
        default=0.5, metadata={"help": "Weight of the soft-target (teacher logits) loss, >= 0."}
    )
    alpha_ce: float = field(
        default=0.5,
        metadata={"help": "Weight of the ordinary task loss on the labels (cross-entropy), >= 0."},
    )
    kd_loss: str = field(
        default="forward_kl",
        metadata={
            "help": "Soft-target divergence, a registered one (register_divergence adds yours): built in "
            "'forward_kl' (KL(teacher||student), Hinton et al. 2015), 'reverse_kl' (KL(student||teacher)) or "
            "'jsd' (generalised JSD, Agarwal et al. 2024).",
        },
    )
    jsd_beta: float = field(
        default=0.5,
        metadata={"help": "Teacher weight of the JSD mixture, strictly between 0 and 1 (used with kd_loss='jsd')."},
    )
    kd_loss_params: dict | str | None = field(
        default=None,
        metadata={"help": "Parameters the divergence declares (Divergence.params), as a dict or a JSON string, "
                  "e.g. '{\"alpha\": 0.5}'; the JSD's beta is jsd_beta."},
    )
    kd_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Rows (tokens) of logits per chunk of the soft-target loss, each recomputed in the "
                  "backward pass so large-vocabulary KD does not hold several float32 copies of all logits. "
                  "Default: chunks of about 4M logits (16 MB) when the logits are larger than that."},
    )
    fused_lm_head_loss: bool | None = field(
        default=None,
        metadata={"help": "Causal LMs: feed the final hidden states and the output layer's weight (the student's and, "
                  "online, the teacher's) into a loss that makes the logits a chunk of tokens at a time (kd_chunk_size "
                  "rows, default about 16M logits, 32M for cached targets at T = 1 without label smoothing), so the "
                  "[tokens x vocabulary] logits never exist. Same losses and gradients as the materialised logits. "
                  "Unset: on wherever the model allows it (its forward takes logits_to_keep, a plain nn.Linear head, "
                  "no softcapping or logit scale, no FSDP/DeepSpeed), otherwise off with an info log; True: raise "
                  "where it cannot; False: always materialise the logits. "
                  "Calls that ask for the logits (return_outputs=True, evaluation) get them materialised."},
    )
    compile_fused_loss: bool = field(
        default=False,
        metadata={"help": "With the fused LM-head loss, online, and a divergence with a closed-form gradient (the "
                  "built-ins): run each chunk's elementwise work through torch.compile (fused loops, on CPU C++ built "
                  "by the system's compiler). The same losses and gradients up to float rounding; compiling costs "
                  "about a minute once per process (on CPU), so it pays off over long runs only. Falls back to the "
                  "eager chunk, with a warning, where it fails to compile."},
    )
    fused_loss_backend: str | None = field(
        default=None,
        metadata={"help": "Who computes the fused LM-head loss: 'torch' (the built-in chunked PyTorch loss) or 'liger' "
                  "(Liger-Kernel's LigerFusedLinearJSDLoss, pip install \"hf-bigsmall[liger]\"; online KD with "
                  "kd_loss 'forward_kl', 'reverse_kl' or 'jsd', no label smoothing; anything else raises). Unset: "
                  "'liger' where use_liger_kernel=True (as TRL's GKD trainer does) and it can compute the loss, "
                  "otherwise 'torch' (with one warning when use_liger_kernel=True).",
                  "choices": list(FUSED_LOSS_BACKENDS)},
    )
    alpha_hidden: float = field(
        default=0.0,
        metadata={"help": "Weight of the hidden-state loss between mapped layers, >= 0 (0 turns it off)."},
    )
    hidden_loss: str = field(
        default="mse",
        metadata={"help": "Hidden-state distance: 'mse' or 'cosine'.", "choices": list(HIDDEN_LOSSES)},
    )
    alpha_attention: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the attention-map loss (KL between attention rows, MiniLM), >= 0. Needs "
            "eager attention: the trainer switches both models to it."
        },
    )
    layer_map: list[int] | None = field(
        default=None,
        metadata={
            "help": "Teacher layer (0-based) matched by each student layer, one entry per student layer. "
            "Default: the layers the student was initialised from (make_student), else spread evenly "
            "with the last layers aligned."
        },
    )
    teacher_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Cast the teacher to this dtype ('float32', 'bfloat16', 'float16'); 'auto' or "
            "unset keeps it as loaded.",
        },
    )
    teacher_logits: str | None = field(
        default=None,
        metadata={
            "help": "Folder of a teacher-logit cache (cache_teacher_logits) to distil from with no teacher in the "
            "loop (teacher_model=None): it is checked against the train dataset and the student before training."
        },
    )

    kd_tail: str = field(
        default="uniform",
        metadata={
            "help": "From a causal-LM teacher-logit cache under temperature != 1: how the teacher's softened mass "
            "outside the cached top-k is estimated, 'uniform' (spread evenly over the other tokens) or 'student' "
            "(shaped like the student's own tail). Unused at T = 1 and with an online teacher.",
            "choices": list(TAIL_MODELS),
        },
    )

    shuffle_length_groups: bool = field(
        default=False,
        metadata={
            "help": "With train_sampling_strategy='group_by_length': draw the batches of similar length in random "
            "order (hf_bigsmall.data.ShuffledLengthGroupedSampler, seeded with data_seed, else seed) instead of the "
            "Trainer's longest-first windows, which left the quickstart's int8 student 0.55 point lower over 3 seeds "
            "(BENCHMARKS.md, 'Batches of similar length')."
        },
    )

    def __post_init__(self):
        if needs_cpu_process_group(self.use_cpu):
            # several processes on a machine without a GPU only form a (gloo) group with use_cpu:
            # without it each rank would silently train alone on the whole dataset
            logger.warning("Several processes were launched on a machine without a GPU: setting use_cpu=True.")
            self.use_cpu = True
        super().__post_init__()
        check_finite("temperature", self.temperature, "> 0")
        for name in ("alpha_kd", "alpha_ce", "alpha_hidden", "alpha_attention"):
            check_finite(name, getattr(self, name), ">= 0")
        check_finite("jsd_beta", self.jsd_beta, "strictly between 0 and 1")
        # the task loss applies label smoothing as the Trainer's LabelSmoother does
        if not 0.0 <= check_finite("label_smoothing_factor", self.label_smoothing_factor, "in [0, 1)") < 1.0:
            raise ValueError(f"label_smoothing_factor must be in [0, 1) (0 turns it off), got {self.label_smoothing_factor}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (1 keeps the logits as they are), got {self.temperature}.")
        weights = {
            "alpha_kd": self.alpha_kd,
            "alpha_ce": self.alpha_ce,
            "alpha_hidden": self.alpha_hidden,
            "alpha_attention": self.alpha_attention,
        }
        negative = {name: value for name, value in weights.items() if value < 0}
        if negative:
            raise ValueError(f"loss weights must be >= 0, got {negative}.")
        if sum(weights.values()) == 0:
            raise ValueError(
                "All loss weights are zero, so nothing would be trained: set alpha_kd and/or alpha_ce "
                "(and optionally alpha_hidden, alpha_attention) to a positive value."
            )
        self._check_divergence()
        if self.kd_loss == "jsd" and not 0.0 < self.jsd_beta < 1.0:
            raise ValueError(
                f"jsd_beta must be strictly between 0 and 1, got {self.jsd_beta}: at 0 or 1 the "
                "generalised JSD is identically zero. Use kd_loss='forward_kl' or 'reverse_kl' instead."
            )
        if self.kd_chunk_size is not None and self.kd_chunk_size < 1:
            raise ValueError(f"kd_chunk_size must be a positive number of rows (or unset for automatic), "
                             f"got {self.kd_chunk_size}.")
        if self.kd_tail not in TAIL_MODELS:
            raise ValueError(f"kd_tail must be one of {TAIL_MODELS}, got {self.kd_tail!r}.")
        if self.hidden_loss not in HIDDEN_LOSSES:
            raise ValueError(f"hidden_loss must be one of {HIDDEN_LOSSES}, got {self.hidden_loss!r}.")
        if self.teacher_dtype is not None and self.teacher_dtype not in TEACHER_DTYPES:
            raise ValueError(f"teacher_dtype must be one of {TEACHER_DTYPES} or unset, got {self.teacher_dtype!r}.")
        if self.layer_map is not None:
            self.layer_map = [int(index) for index in self.layer_map]
            if any(index < 0 for index in self.layer_map):
                raise ValueError(f"layer_map holds teacher layer indices >= 0, got {self.layer_map}.")
        if self.shuffle_length_groups and self.train_sampling_strategy != "group_by_length":
            raise ValueError(f"shuffle_length_groups=True orders the batches of train_sampling_strategy='group_by_length', "
                             f"but it is {self.train_sampling_strategy!r}: set train_sampling_strategy='group_by_length' "
                             "too, or drop shuffle_length_groups.")
        self._check_fused_loss_backend()
        if self.teacher_logits:  # before anything reads or writes there
            check_cache_folder(self.teacher_logits)

    def _check_fused_loss_backend(self) -> None:
        """`fused_loss_backend` is a known one, and 'liger' is asked for only where Liger can compute the loss."""
        if self.fused_loss_backend is not None and self.fused_loss_backend not in FUSED_LOSS_BACKENDS:
            raise ValueError(f"fused_loss_backend must be one of {FUSED_LOSS_BACKENDS} or unset, got "
                             f"{self.fused_loss_backend!r}.")
        if self.fused_loss_backend != "liger":
            return
        if self.fused_lm_head_loss is False:
            raise ValueError("fused_loss_backend='liger' computes the fused LM-head loss, but fused_lm_head_loss=False "
                             "turns it off: unset one of them.")
        reason = self.liger_refusal()
        if reason is not None:
            raise ValueError(f"fused_loss_backend='liger' but {reason}. Set fused_loss_backend='torch' (the built-in "
                             "fused loss computes it) or change that setting.")
        require_liger_kernel()

    def liger_refusal(self) -> str | None:
        """Why Liger-Kernel cannot compute these loss settings (`fused_loss_backend="liger"`), or None."""
        soft_targets = "none" if self.alpha_kd == 0 else "cache" if self.teacher_logits else "teacher"
        return liger_setting_refusal(self.kd_loss, self.label_smoothing_factor, soft_targets)

    def _check_divergence(self) -> None:
        """`kd_loss` names a registered divergence and `kd_loss_params` are parameters it declares."""
        if isinstance(self.kd_loss_params, str):
            try:
                self.kd_loss_params = json.loads(self.kd_loss_params)
            except json.JSONDecodeError as error:
                raise ValueError(f"kd_loss_params must be a JSON object such as '{{\"alpha\": 0.5}}', got "
                                 f"{self.kd_loss_params!r} ({error}).") from None
        if self.kd_loss_params is not None and not isinstance(self.kd_loss_params, dict):
            raise ValueError(f"kd_loss_params must be a dict of the divergence's parameters, got "
                             f"{self.kd_loss_params!r}.")
        if self.kd_loss == "jsd" and "beta" in (self.kd_loss_params or {}):
            raise ValueError("the JSD's beta is set by jsd_beta: move it out of kd_loss_params.")
        resolve_divergence(self.kd_loss, self.divergence_params(), argument="kd_loss")

    @property
    def divergence(self) -> Divergence:
        """The registered entry `kd_loss` names (its `description` is the card's and reports' line for it)."""
        return resolve_divergence(self.kd_loss, self.divergence_params(), argument="kd_loss")[0]

    def divergence_params(self) -> dict[str, Any]:
        """The parameters given to the divergence: `kd_loss_params`, and for the JSD `beta=jsd_beta`."""
        params = dict(self.kd_loss_params or {})
        if self.kd_loss == "jsd":
            params["beta"] = self.jsd_beta
        return params

    def loss_settings(self) -> dict:
        """The loss settings recorded in the student's `config.distillation`."""
        return {
            "temperature": self.temperature,
            "alpha_kd": self.alpha_kd,
            "alpha_ce": self.alpha_ce,
            "kd_loss": self.kd_loss,
            **({"jsd_beta": self.jsd_beta} if self.kd_loss == "jsd" else {}),
            **({"kd_loss_params": dict(self.kd_loss_params)} if self.kd_loss_params else {}),
            "alpha_hidden": self.alpha_hidden,
            "hidden_loss": self.hidden_loss,
            "alpha_attention": self.alpha_attention,
        }
