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


def task_of(model_or_config) -> str:
    """`text-classification` or `text-generation`, from a model's class or a saved config's architecture.

    A runner of a serving engine (`OnnxModelRunner`, `GenAIModelRunner`, ...) knows its task and says so.

    Raises:
        ValueError: a model without a sequence-classification or causal LM head.
    """
    if getattr(model_or_config, "task", None) in (TEXT_CLASSIFICATION, TEXT_GENERATION):
        return model_or_config.task
    if hasattr(model_or_config, "config"):  # a model never saved has no `architectures` in its config yet
        architecture, config = type(model_or_config).__name__, model_or_config.config
    else:
        architecture, config = (getattr(model_or_config, "architectures", None) or [""])[0], model_or_config
    head = task_head(architecture)
    if head is not None and head.pipeline_tag in (TEXT_CLASSIFICATION, TEXT_GENERATION):
        return head.pipeline_tag
    raise ValueError(
        f"Cannot compare a {architecture or config.model_type!r} model: compare_models measures sequence "
        "classifiers (accuracy, F1) and causal language models (perplexity). Save the model with its task head."
    )


def evaluation_split(split_names) -> str | None:
    """The held-out split to evaluate on: `validation`, else `test`, else None."""
    return next((name for name in EVALUATION_SPLITS if name in split_names), None)
