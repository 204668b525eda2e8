"""hf_bigsmall: turn a big transformer into a small one you can trust.

Distillation, pruning, energy accounting and big-vs-small reports on top of
`transformers.Trainer`. Public names are imported lazily so that `import hf_bigsmall` stays cheap
(it does not import torch or transformers until a name that needs them is used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY_IMPORTS: dict[str, str] = {
    # the seam between a Trainer and the kit's callbacks
    "BigSmallTrainerMixin": "hf_bigsmall.trainer",
    "BigSmallTrainer": "hf_bigsmall.trainer",
    # distillation
    "DistillationConfig": "hf_bigsmall.distillation.config",
    "DistillationTrainer": "hf_bigsmall.distillation.trainer",
    "make_student": "hf_bigsmall.distillation.student",
    "cache_teacher_logits": "hf_bigsmall.distillation.cache",
    "load_teacher_logits": "hf_bigsmall.distillation.cache",
    "cached_kd_loss": "hf_bigsmall.distillation.cached_loss",
    "kd_loss": "hf_bigsmall.losses",
    # divergences: the registry distillation's soft-target loss takes its divergence from
    "Divergence": "hf_bigsmall.distillation.divergences",
    "divergence_names": "hf_bigsmall.distillation.divergences",
    "get_divergence": "hf_bigsmall.distillation.divergences",
    "register_divergence": "hf_bigsmall.distillation.divergences",
    # pruning
    "MagnitudePruningCallback": "hf_bigsmall.pruning.callback",
    "PruningCriterion": "hf_bigsmall.pruning.criteria",
    "get_pruning_criterion": "hf_bigsmall.pruning.criteria",
    "prune_one_shot": "hf_bigsmall.pruning.one_shot",
    "pruning_criterion_names": "hf_bigsmall.pruning.criteria",
    "register_pruning_criterion": "hf_bigsmall.pruning.criteria",
    "sparsity_report": "hf_bigsmall.pruning.masks",
    "compact": "hf_bigsmall.pruning.compact",
    "save_pruned_model": "hf_bigsmall.pruning.io",
    "trim_vocabulary": "hf_bigsmall.pruning.vocabulary",
    "compute_importance": "hf_bigsmall.pruning.importance",
    "prune_width": "hf_bigsmall.pruning.width",
    # energy
    "EnergyCallback": "hf_bigsmall.energy.callback",
    "measure_inference": "hf_bigsmall.energy.inference",
    # quantization
    "QuantizationBackend": "hf_bigsmall.quantization.backends",
    "get_quantization_backend": "hf_bigsmall.quantization.backends",
    "quantization_backend_names": "hf_bigsmall.quantization.backends",
    "quantize": "hf_bigsmall.quantization.api",
    "register_quantization_backend": "hf_bigsmall.quantization.backends",
    # big vs small
    "compare_models": "hf_bigsmall.reporting.compare",
    "build_model_card": "hf_bigsmall.hub.card",
    "push_folder": "hf_bigsmall.hub.push",
}

__all__ = ["__version__", *_LAZY_IMPORTS]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .distillation.cache import cache_teacher_logits, load_teacher_logits
    from .distillation.cached_loss import cached_kd_loss
    from .distillation.config import DistillationConfig
    from .distillation.divergences import Divergence, divergence_names, get_divergence, register_divergence
    from .distillation.student import make_student
    from .distillation.trainer import DistillationTrainer
    from .energy.callback import EnergyCallback
    from .energy.inference import measure_inference
    from .hub.card import build_model_card
    from .hub.push import push_folder
    from .losses import kd_loss
    from .pruning.callback import MagnitudePruningCallback
    from .pruning.compact import compact
    from .pruning.criteria import (
        PruningCriterion,
        get_pruning_criterion,
        pruning_criterion_names,
        register_pruning_criterion,
    )
    from .pruning.importance import compute_importance
    from .pruning.io import save_pruned_model
    from .pruning.masks import sparsity_report
    from .pruning.one_shot import prune_one_shot
    from .pruning.vocabulary import trim_vocabulary
    from .pruning.width import prune_width
    from .quantization.backends import (
        QuantizationBackend,
        get_quantization_backend,
        quantization_backend_names,
        register_quantization_backend,
    )
    from .quantization.api import quantize
    from .reporting.compare import compare_models
    from .trainer import BigSmallTrainer, BigSmallTrainerMixin


def __getattr__(name: str) -> Any:
    module_name = _LAZY_IMPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'hf_bigsmall' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
