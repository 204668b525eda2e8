"""The one table of task heads: which Auto class loads a model, which pipeline tag its card gets,
and whether it returns the `logits` a teacher's soft targets are taken from.

A head is recognised by the end of its class name (`BertForSequenceClassification`,
`GPT2LMHeadModel`, `LlamaForCausalLM`), as saved in `config.json`'s `architectures`.
"""

from __future__ import annotations

from typing import NamedTuple


class TaskHead(NamedTuple):
    auto_class: str
    pipeline_tag: str
    returns_logits: bool


TEXT_CLASSIFICATION = "text-classification"
TEXT_GENERATION = "text-generation"

# class-name suffix -> its head
TASK_HEADS: dict[str, TaskHead] = {
    "ForSequenceClassification": TaskHead("AutoModelForSequenceClassification", TEXT_CLASSIFICATION, True),
    "ForCausalLM": TaskHead("AutoModelForCausalLM", TEXT_GENERATION, True),
    "LMHeadModel": TaskHead("AutoModelForCausalLM", TEXT_GENERATION, True),  # GPT2LMHeadModel
    "ForTokenClassification": TaskHead("AutoModelForTokenClassification", "token-classification", True),
    "ForMaskedLM": TaskHead("AutoModelForMaskedLM", "fill-mask", True),
    "ForQuestionAnswering": TaskHead("AutoModelForQuestionAnswering", "question-answering", False),  # start/end logits
}

# where a model is evaluated when the dataset has no split of that name: the first that exists
EVALUATION_SPLITS = ("validation", "test")


def task_head(class_name: str) -> TaskHead | None:
    """The head of a model class name (`"GPT2LMHeadModel"`), or None for a bare backbone."""
    return next((head for suffix, head in TASK_HEADS.items() if class_name.endswith(suffix)), None)


def evaluation_split(split_names) -> str | None:
    """The held-out split to evaluate on: `validation`, else `test`, else None."""
    return next((name for name in EVALUATION_SPLITS if name in split_names), None)
