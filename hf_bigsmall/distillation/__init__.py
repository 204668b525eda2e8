"""Knowledge distillation on `transformers.Trainer`: a config, a trainer and a student builder."""

from .cache import cache_teacher_logits, load_teacher_logits
from .config import DistillationConfig
from .student import make_student
from .trainer import DistillationTrainer

__all__ = ["DistillationConfig", "DistillationTrainer", "cache_teacher_logits", "load_teacher_logits", "make_student"]
