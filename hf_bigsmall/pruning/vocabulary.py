"""Vocabulary trimming: keep only the tokens a task uses, so the embedding table shrinks too.

Half of a small BERT's parameters can be its word embeddings (all-MiniLM-L6-v2: 11.7 M of 22.7 M for
30,522 tokens), and distillation or pruning of the layers leaves them untouched. A task's texts use a
fraction of the vocabulary; `trim_vocabulary` keeps those tokens (and the special ones), slices the
embedding rows to match, and returns a tokenizer whose ids follow the new table.

On the texts it was trimmed on, the trimmed tokenizer and model give exactly the tokens and outputs
of the original (WordPiece picks the longest known prefix, and every piece those texts use is kept).
A text with a piece that was not kept is split into smaller kept pieces or becomes `[UNK]`: trim on
the training set, and measure the held-out quality (the quickstart does).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .record import VocabularyTrimmingRecord

# token-id fields of a config that must follow the new numbering
_CONFIG_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                     "unk_token_id", "mask_token_id", "decoder_start_token_id")


def _backend_json(tokenizer) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"trim_vocabulary needs a fast (tokenizers-backed) tokenizer, got {type(tokenizer).__name__}: "
                         "load it with AutoTokenizer.from_pretrained(..., use_fast=True).")
    data = json.loads(backend.to_str())
    kind = data.get("model", {}).get("type")
    if kind != "WordPiece":
        raise ValueError(
            f"trim_vocabulary supports WordPiece vocabularies (BERT, DistilBERT, MiniLM, ELECTRA ...); this "
            f"tokenizer's model is {kind}. BPE merges (GPT-2, Llama) refer to each other, so removing tokens "
            "would change how kept words are split."
        )
    return data


def trimming_unsupported(tokenizer) -> str | None:
    """Why `trim_vocabulary` cannot trim this tokenizer's vocabulary, or None when it can."""
    try:
        _backend_json(tokenizer)
    except ValueError as error:
        return str(error)
    return None


def used_token_ids(tokenizer, texts: Iterable[str], min_count: int = 1, batch_size: int = 1000) -> list[int]:
    """Ids of the tokens that occur at least `min_count` times in `texts` (no truncation), sorted."""
    counts: Counter[int] = Counter()
    batch: list[str] = []

    def flush() -> None:
        for ids in tokenizer(batch, add_special_tokens=False, truncation=False)["input_ids"]:
            counts.update(ids)
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return sorted(token for token, count in counts.items() if count >= min_count)


def _remap_post_processor(processor: dict | None, remap: dict[int, int]) -> None:
    if not processor:
        return
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        for special in processor.get("special_tokens", {}).values():
            special["ids"] = [remap[i] for i in special["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            token, index = processor[key]
            processor[key] = [token, remap[index]]
    elif kind == "Sequence":
        for inner in processor.get("processors", []):
            _remap_post_processor(inner, remap)


def _trimmed_tokenizer(tokenizer, keep: list[int]):
    from transformers import AutoTokenizer

    remap = {old: new for new, old in enumerate(keep)}
    id_to_token = {index: token for token, index in tokenizer.get_vocab().items()}
    data = _backend_json(tokenizer)
    data["model"]["vocab"] = {id_to_token[old]: new for old, new in remap.items()}
    for added in data.get("added_tokens", []):
        added["id"] = remap[added["id"]]
    _remap_post_processor(data.get("post_processor"), remap)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer.save_pretrained(scratch)
        (Path(scratch) / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        vocab_file = Path(scratch) / "vocab.txt"
        if vocab_file.exists():  # kept consistent for loaders that read it instead of tokenizer.json
            vocab_file.write_text("".join(f"{id_to_token[old]}\n" for old in keep), encoding="utf-8")
        trimmed = AutoTokenizer.from_pretrained(scratch)
    if len(trimmed) != len(keep):
        raise RuntimeError(f"the trimmed tokenizer has {len(trimmed)} tokens, expected {len(keep)}")
    return trimmed


def trim_vocabulary(model, tokenizer, texts: Iterable[str], *, min_count: int = 1,
                    keep_tokens: Iterable[str] = ()) -> tuple[Any, Any]:
    """Keep only the tokens `texts` use: slice `model`'s word embeddings and renumber `tokenizer`.

    Args:
        model: a `PreTrainedModel` without an LM head (sequence or token classifiers, encoders).
            Changed in place: smaller input embeddings, `config.vocab_size` and token-id fields
            renumbered, and a `vocabulary_trimming` block in its config saying what was done.
        tokenizer: its fast WordPiece tokenizer (BERT family).
        texts: the task's texts, usually the training set.
        min_count: keep a token only if it occurs at least this often (1 keeps every used token,
            so the texts tokenize exactly as before).
        keep_tokens: tokens to keep whatever their count. Special and added tokens are always kept.

    Returns:
        `(model, tokenizer)`: the same model object, trimmed, and a new tokenizer. Save both to the
        same folder; plain `from_pretrained` reloads them.

    Raises:
        ValueError: for a tokenizer that is not WordPiece, a model with an LM head, a tokenizer
            larger than the model's vocabulary, or `min_count` < 1.

    Example:

    ```python
    >>> from hf_bigsmall.pruning.vocabulary import trim_vocabulary
    >>> model, tokenizer = trim_vocabulary(model, tokenizer, train_dataset["text"])
    >>> model.save_pretrained("student-trimmed"); tokenizer.save_pretrained("student-trimmed")
    ```
    """
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}.")
    _backend_json(tokenizer)  # checks the tokenizer kind before any work
    if model.get_output_embeddings() is not None:
        raise ValueError(
            f"{type(model).__name__} has an LM head over the vocabulary; trim_vocabulary supports models without "
            "one (sequence/token classification, encoders). Trim the classifier made from it instead."
        )
    embeddings = model.get_input_embeddings()
    original_size = embeddings.num_embeddings
    if len(tokenizer) > original_size:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the model's embedding only {original_size}: "
                         "pass the tokenizer the model was trained with.")

    texts = list(texts)
    keep_set = set(used_token_ids(tokenizer, texts, min_count=min_count))
    keep_set |= set(tokenizer.all_special_ids)
    keep_set |= {index for token, index in tokenizer.get_added_vocab().items()}
    keep_set |= set(tokenizer.convert_tokens_to_ids(list(keep_tokens)))
    keep = sorted(keep_set)
    remap = {old: new for new, old in enumerate(keep)}

    new_tokenizer = _trimmed_tokenizer(tokenizer, keep)

    config = model.config
    padding_idx = remap.get(config.pad_token_id) if getattr(config, "pad_token_id", None) is not None else None
    rows = torch.tensor(keep, dtype=torch.long, device=embeddings.weight.device)
    trimmed = nn.Embedding(len(keep), embeddings.embedding_dim, padding_idx=padding_idx,
                           device=embeddings.weight.device, dtype=embeddings.weight.dtype)
    with torch.no_grad():
        trimmed.weight.copy_(embeddings.weight.index_select(0, rows))
    trimmed.weight.requires_grad_(embeddings.weight.requires_grad)
    model.set_input_embeddings(trimmed)

    config.vocab_size = len(keep)
    for field_name in _CONFIG_TOKEN_IDS:
        value = getattr(config, field_name, None)
        if isinstance(value, int) and value in remap:
            setattr(config, field_name, remap[value])
    VocabularyTrimmingRecord(original_vocab_size=original_size, vocab_size=len(keep), min_count=min_count,
                             num_texts=len(texts)).write(config)
    return model, new_tokenizer
