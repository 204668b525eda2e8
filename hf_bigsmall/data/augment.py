"""Augmented copies of the training text: TinyBERT's word replacement (Jiao et al., 2020).

Each copy of a text replaces some of its words, each with probability `replace_probability`, by
one of the word's nearest neighbours. TinyBERT takes the neighbours of single-piece words from a
masked LM and of the others from GloVe; neither ships here, so the neighbours come from the
teacher's own input embeddings (cosine similarity between whole-word vocabulary entries), which
needs no download and no extra model. A replacement may flip a review's sentiment ("good" ->
"bad"), which is why the copies carry no label: the teacher labels them (`labels = -100`, soft
targets only), exactly like a transfer set.

`cached_augmentation` makes the copies once and keeps them in a JSON file beside the run, reused
while the texts, the teacher's embeddings and the settings are the same.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers.utils import logging

from ..utils.files import atomic_write_json
from .transfer import normalise_text

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

logger = logging.get_logger(__name__)

METHOD = "word replacement by teacher-embedding neighbours (TinyBERT)"
_PIECES = re.compile(r"[^\W\d_]+|[\W\d_]+")
_WORD_START = ("Ġ", "▁")  # byte-level BPE and SentencePiece mark a piece that starts a word


def _whole_words(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Vocabulary entries that are a whole alphabetic word of two letters or more: word -> token id."""
    special = set(tokenizer.all_special_tokens)
    words: dict[str, int] = {}
    for token, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        if token in special or token.startswith("##"):
            continue
        word = token[1:] if token.startswith(_WORD_START) else token
        if len(word) > 1 and word.isalpha():
            words.setdefault(word.lower(), index)
    return words


def embedding_neighbours(
    tokenizer: PreTrainedTokenizerBase,
    embeddings: torch.Tensor,
    words: Iterable[str],
    top_k: int = 8,
) -> dict[str, list[str]]:
    """The `top_k` nearest whole words of each of `words` by cosine similarity of input embeddings.

    Args:
        tokenizer: the teacher's tokenizer; only its whole-word vocabulary entries take part.
        embeddings: (vocab_size, hidden) input embedding matrix (`teacher.get_input_embeddings().weight`).
        words: the words to find neighbours for (those of the training text); a word that is not
            one vocabulary entry gets none and is never replaced.
        top_k: neighbours kept per word.

    Returns:
        `{word: [neighbour, ...]}` in lowercase, nearest first, the word itself left out.
    """
    import torch

    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}.")
    vocabulary = _whole_words(tokenizer)
    if embeddings.dim() != 2 or embeddings.shape[0] <= max(vocabulary.values(), default=0):
        raise ValueError(f"embeddings must be the (vocab_size, hidden) input embeddings of the tokenizer's model, got "
                         f"shape {tuple(embeddings.shape)} for a vocabulary of {len(tokenizer)}.")
    names = list(vocabulary)
    candidates = torch.nn.functional.normalize(embeddings.detach().float()[list(vocabulary.values())], dim=-1)
    queries = sorted({word.lower() for word in words} & vocabulary.keys())
    position = {name: i for i, name in enumerate(names)}
    neighbours: dict[str, list[str]] = {}
    with torch.no_grad():
        for start in range(0, len(queries), 512):
            chunk = queries[start : start + 512]
            similarity = candidates[[position[word] for word in chunk]] @ candidates.T
            similarity[torch.arange(len(chunk)), [position[word] for word in chunk]] = -math.inf
            nearest = similarity.topk(min(top_k, len(names) - 1), dim=-1).indices.tolist()
            for word, row in zip(chunk, nearest):
                neighbours[word] = [names[i] for i in row]
    return neighbours


def _match_case(replacement: str, original: str) -> str:
    if original.isupper() and len(original) > 1:
        return replacement.upper()
    return replacement.capitalize() if original[:1].isupper() else replacement


def augment_texts(
    texts: list[str],
    neighbours: dict[str, list[str]],
    ratio: float = 1.0,
    replace_probability: float = 0.4,
    seed: int = 42,
    exclude: Iterable[str] = (),
) -> list[str]:
    """Copies of `texts` with words replaced by their neighbours.

    Args:
        texts: the texts to copy (the labelled training texts).
        neighbours: `{word: [neighbour, ...]}` (`embedding_neighbours`).
        ratio: copies per text: 2.0 makes two of every text, 0.5 one of half of them (drawn with `seed`).
        replace_probability: chance that a word with neighbours is replaced (TinyBERT's 0.4).
        seed: the same seed, texts and settings give the same copies.
        exclude: texts no copy may equal (compared by `normalise_text`), e.g. the test reviews.

    Returns:
        the copies, in the order of their source texts; a copy in which nothing changed, or equal to
        an excluded text or to another copy, is left out, so there may be fewer than `ratio * len(texts)`.
    """
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio >= 0):
        raise ValueError(f"ratio (--augment_ratio) must be a finite number >= 0 (copies per text), got {ratio!r}.")
    if not (isinstance(replace_probability, (int, float)) and 0 < replace_probability <= 1):
        raise ValueError(f"replace_probability must be in (0, 1], got {replace_probability!r}.")
    rng = random.Random(seed)
    seen = {normalise_text(text) for text in exclude} | {normalise_text(text) for text in texts}
    copies: list[str] = []
    for text in texts:
        count = int(ratio) + (rng.random() < ratio - int(ratio))
        pieces = _PIECES.findall(text)
        for _ in range(count):
            changed = [
                _match_case(rng.choice(neighbours[piece.lower()]), piece)
                if piece.lower() in neighbours and rng.random() < replace_probability else piece
                for piece in pieces
            ]
            copy = "".join(changed)
            key = normalise_text(copy)
            if key not in seen:
                seen.add(key)
                copies.append(copy)
    return copies


def _read_augmentation_cache(path: Path) -> dict[str, Any] | None:
    """The saved cache at `path` when it is one `cached_augmentation` wrote, else None."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (isinstance(saved, dict) and set(saved) == {"key", "record", "texts"} and isinstance(saved["key"], dict)
            and isinstance(saved["record"], dict) and isinstance(saved["texts"], list)):
        return saved
    return None


def is_augmentation_cache(path: str | Path) -> bool:
    """Whether `path` is a file that `cached_augmentation` wrote (and so may be replaced or removed)."""
    path = Path(path)
    return path.is_file() and _read_augmentation_cache(path) is not None


def cached_augmentation(
    path: str | os.PathLike,
    texts: list[str],
    tokenizer: PreTrainedTokenizerBase,
    embeddings: torch.Tensor,
    ratio: float = 1.0,
    replace_probability: float = 0.4,
    top_k: int = 8,
    seed: int = 42,
    exclude: Iterable[str] = (),
) -> tuple[list[str], dict[str, Any]]:
    """`augment_texts` with neighbours from `embeddings`, made once and kept in the JSON file `path`.

    The file is reused while the texts, the embeddings, the exclusions and the settings are the same;
    anything else makes the copies again in its place.

    Returns:
        `(copies, record)`: the augmented texts and what made them, for the model card (`method`,
        `ratio`, `replace_probability`, `top_k`, `seed`, `source_texts`, `samples`).

    Example:

    ```python
    >>> from hf_bigsmall.data import cached_augmentation
    >>> copies, record = cached_augmentation("out/augmented.json", train_texts, tokenizer,
    ...                                      teacher.get_input_embeddings().weight, ratio=1.0, seed=42)
    ```
    """
    exclude = list(exclude)
    digest = hashlib.sha256()
    for text in (*texts, "\0", *exclude):
        digest.update(text.encode() + b"\0")
    digest.update(embeddings.detach().float().cpu().contiguous().numpy().tobytes())
    settings = {"ratio": ratio, "replace_probability": replace_probability, "top_k": top_k, "seed": seed}
    key = {**settings, "inputs": digest.hexdigest()[:32]}
    path = Path(path)
    if path.exists():
        saved = _read_augmentation_cache(path)
        if saved is None:  # someone else's file: never replaced
            raise ValueError(
                f"{path} exists and is not an augmentation cache written by hf_bigsmall; nothing was written. "
                "Move or delete it, or pass another path."
            )
        if saved["key"] == key:
            logger.info("Reusing the %d augmented texts in %s", len(saved["texts"]), path)
            return saved["texts"], saved["record"]
    words = {piece for text in texts for piece in _PIECES.findall(text)}
    neighbours = embedding_neighbours(tokenizer, embeddings, words, top_k=top_k)
    copies = augment_texts(texts, neighbours, ratio=ratio, replace_probability=replace_probability, seed=seed,
                           exclude=exclude)
    record = {"method": METHOD, **settings, "source_texts": len(texts), "samples": len(copies)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"key": key, "record": record, "texts": copies})
    return copies, record
