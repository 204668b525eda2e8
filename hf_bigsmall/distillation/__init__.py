"""Knowledge distillation on `transformers.Trainer`: a config, a trainer and a student builder."""

from .config import DistillationConfig
from .student import make_student
from .trainer import DistillationTrainer

__all__ = ["DistillationConfig", "DistillationTrainer", "make_student"]
