"""Knowledge distillation on `transformers.Trainer`: a config, a trainer and a student builder.

Names are imported when first used, so that reading a saved model's distillation record
(`hf_bigsmall.distillation.record`, which the model card does) and taking the divergence registry
(`hf_bigsmall.distillation.divergences`, which `hf_bigsmall.losses` does) import no trainer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_names

_LAZY_IMPORTS: dict[str, str] = {
    "DistillationConfig": ".config",
    "DistillationTrainer": ".trainer",
    "cache_teacher_logits": ".cache",
    "load_teacher_logits": ".cache",
    "make_student": ".student",
}

__all__ = ["DistillationConfig", "DistillationTrainer", "cache_teacher_logits", "load_teacher_logits", "make_student"]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .cache import cache_teacher_logits, load_teacher_logits
    from .config import DistillationConfig
    from .student import make_student
    from .trainer import DistillationTrainer


__getattr__ = lazy_names(__name__, _LAZY_IMPORTS, globals())


def __dir__() -> list[str]:
    return sorted(__all__)
