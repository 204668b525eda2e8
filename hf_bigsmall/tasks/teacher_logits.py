"""Recipe options to distil from a teacher-logit cache instead of running the teacher every step."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..distillation.cache import LOGPROB_DTYPES

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel

    from ..distillation.config import DistillationConfig


@dataclass
class TeacherLogitsArguments:
    """`--cache_teacher_logits` (make a cache, then distil from it) and its settings.

    `--teacher_logits PATH` (a `DistillationConfig` field) distils from an existing cache; with
    `--cache_teacher_logits` the cache is made first, in PATH or `<output_dir>/teacher_logits`
    (an interrupted run resumes there).
    """

    cache_teacher_logits: bool = field(default=False, metadata={
        "help": "Run the teacher once over the training set and distil from its cached logits "
                "(in --teacher_logits, default <output_dir>/teacher_logits), with no teacher in the training loop."})
    cache_top_k: int = field(default=128, metadata={
        "help": "Log-probabilities kept per target token in a causal LM cache (the vocabulary size is exact)."})
    cache_tail_samples: int = field(default=0, metadata={
        "help": "Tokens drawn per target token from the teacher's distribution outside the top-k, kept with their "
                "log-probabilities (0: top-k only; see BENCHMARKS.md for what they buy)."})
    cache_logprob_dtype: str = field(default="uint8", metadata={
        "help": "Storage of the cached log-probabilities: 'uint8' (packed, about 278 bytes per token at k=128), "
                "'float16', 'bfloat16' or 'float32'.", "choices": list(LOGPROB_DTYPES)})

    def teacher_logits_dataset(self, teacher: PreTrainedModel, train_dataset: Dataset,
                               training_args: DistillationConfig) -> Dataset | None:
        """The train dataset carrying the cached teacher columns, or None to distil with the teacher online.

        Sets `training_args.teacher_logits` to the cache used, which the model card then reports.
        """
        from ..distillation.cache import cache_teacher_logits, load_teacher_logits

        path = training_args.teacher_logits
        if not self.cache_teacher_logits and not path:
            return None
        path = path or str(Path(training_args.output_dir) / "teacher_logits")
        if self.cache_teacher_logits:
            cache_teacher_logits(teacher, train_dataset, path, top_k=self.cache_top_k,
                                 logprob_dtype=self.cache_logprob_dtype, tail_samples=self.cache_tail_samples,
                                 batch_size=training_args.per_device_eval_batch_size,
                                 disable_tqdm=training_args.disable_tqdm)
        training_args.teacher_logits = path
        return load_teacher_logits(path, train_dataset)
