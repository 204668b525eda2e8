"""Causal language modelling: a text corpus cut into fixed-length blocks of tokens.

Embedded offline default: `assets.HAMLET` (5,593 lines); the recipes use `assets.NEWS` (modern English, a
fixed held-out split) with `assets.SMOLLM2` as teacher. Hub
names (`"wikitext"` with a config, `"gpt2"`) work where a network exists.
"""

from __future__ import annotations

from itertools import chain
from typing import TYPE_CHECKING

from .. import assets
from ..utils.heads import evaluation_split

if TYPE_CHECKING:
    from datasets import DatasetDict
    from transformers import PreTrainedTokenizerBase


def group_texts(examples: dict[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    """Concatenate tokenised texts and cut them into `block_size` blocks, dropping the remainder.

    `labels` is a copy of `input_ids`: the model shifts them, so position t learns token t + 1.
    """
    concatenated = {key: list(chain.from_iterable(examples[key])) for key in examples}
    total = (len(concatenated["input_ids"]) // block_size) * block_size
    blocks = {
        key: [values[i : i + block_size] for i in range(0, total, block_size)] for key, values in concatenated.items()
    }
    blocks["labels"] = [list(block) for block in blocks["input_ids"]]
    return blocks


def load_causal_lm_dataset(
    tokenizer: PreTrainedTokenizerBase,
    dataset_name: str = assets.HAMLET,
    text_column: str = "text",
    block_size: int = 128,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    dataset_config_name: str | None = None,
    seed: int = 42,
) -> DatasetDict:
    """Tokenise a text corpus into `train` / `eval` blocks of `block_size` tokens with labels.

    Lines are joined with the tokenizer's end-of-sequence token in between, so the model sees
    where one line ends. `max_*_samples` count blocks. The eval split is `validation`, else
    `test`, else 10% of `train` (the embedded Hamlet keeps its last 10% of lines apart).
    """
    from datasets import DatasetDict

    kwargs = {"name": dataset_config_name} if dataset_config_name else {}
    raw = assets.load_text_dataset(dataset_name, **kwargs)
    eval_split = evaluation_split(raw)
    if eval_split is None:
        raw = raw["train"].train_test_split(test_size=0.1, seed=seed, shuffle=False)
        eval_split = "test"
    splits = DatasetDict(train=raw["train"], eval=raw[eval_split])
    if text_column not in splits["train"].column_names:
        raise ValueError(
            f"dataset {dataset_name!r} has no column {text_column!r} (columns: {splits['train'].column_names})."
        )
    if block_size > getattr(tokenizer, "model_max_length", block_size):
        raise ValueError(f"block_size {block_size} is longer than the tokenizer's {tokenizer.model_max_length} tokens.")
    separator = tokenizer.eos_token or ""

    def tokenize(batch):
        encoded = tokenizer([text + separator for text in batch[text_column]])
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    tokenized = splits.map(tokenize, batched=True, remove_columns=splits["train"].column_names)
    blocks = tokenized.map(group_texts, batched=True, fn_kwargs={"block_size": block_size})
    for name, limit in (("train", max_train_samples), ("eval", max_eval_samples)):
        if limit is not None and limit < len(blocks[name]):
            blocks[name] = blocks[name].select(range(limit))
        if len(blocks[name]) == 0:
            raise ValueError(f"the {name} split holds less than one block of {block_size} tokens: lower block_size.")
    return blocks


def held_out_perplexity(model, dataset, batch_size: int = 8) -> float:
    """exp(mean NLL) of `model` over every labelled next token of `dataset` (blocks with `labels`).

    The same blocks give the same tokens whatever the model, so a teacher's and a student's figures
    computed here can stand side by side. Positions whose label is -100 are not counted.
    """
    import math

    import torch
    from transformers import default_data_collator

    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        with torch.inference_mode():
            for start in range(0, len(dataset), batch_size):
                rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
                batch = {k: v.to(parameter.device) for k, v in default_data_collator(rows).items()}
                labels = batch.pop("labels")[:, 1:]
                logits = model(**batch).logits[:, :-1].float()
                nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                                                        reduction="sum")
                total_nll += nll.item()
                total_tokens += int((labels != -100).sum())
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise ValueError("The evaluation blocks hold no labelled token: nothing to measure.")
    return math.exp(total_nll / total_tokens)
