"""Word-replacement augmentation: neighbours from embeddings, reproducible copies, made once."""

from __future__ import annotations

import json

import pytest
import torch

from hf_bigsmall.data import augment_texts, cached_augmentation, embedding_neighbours, normalise_text

NEIGHBOURS = {"good": ["great", "fine"], "film": ["movie"], "bad": ["awful"]}
TEXTS = ["A good film!", "The plot is bad.", "Good, GOOD film", "nothing to replace here"]


def _tokenizer(folder):
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = ["good", "great", "fine", "bad", "awful", "film", "movie", "##s", "42"]
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
    return BertTokenizerFast(str(folder / "vocab.txt"))


def test_copies_replace_words_by_their_neighbours_reproducibly():
    copies = augment_texts(TEXTS, NEIGHBOURS, ratio=3.0, replace_probability=1.0, seed=0)
    assert copies == augment_texts(TEXTS, NEIGHBOURS, ratio=3.0, replace_probability=1.0, seed=0)
    assert "A great movie!" in copies or "A fine movie!" in copies
    assert "The plot is awful." in copies
    assert all(copy not in TEXTS for copy in copies)  # nothing unchanged, and never the "nothing to replace" text
    assert any(copy.startswith(("Great, ", "Fine, ")) and ("GREAT" in copy or "FINE" in copy) for copy in copies)
    assert len({normalise_text(copy) for copy in copies}) == len(copies)  # no copy twice


def test_ratio_seed_and_exclusions_shape_the_copies():
    many = [f"good film number {i}" for i in range(200)]
    half = augment_texts(many, NEIGHBOURS, ratio=0.5, replace_probability=1.0, seed=0)
    assert 60 < len(half) < 140
    assert augment_texts(many, NEIGHBOURS, ratio=0.5, seed=1) != augment_texts(many, NEIGHBOURS, ratio=0.5, seed=2)
    assert augment_texts(many, NEIGHBOURS, ratio=0.0) == []
    kept = augment_texts(["good"], {"good": ["great"]}, ratio=1.0, replace_probability=1.0, exclude=["GREAT!"])
    assert kept == []  # the only copy would equal an excluded (test) text
    for ratio in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="augment_ratio"):
            augment_texts(TEXTS, NEIGHBOURS, ratio=ratio)
    with pytest.raises(ValueError, match="replace_probability"):
        augment_texts(TEXTS, NEIGHBOURS, replace_probability=0.0)


def test_neighbours_are_the_nearest_whole_words_of_the_embeddings(tmp_path):
    tokenizer = _tokenizer(tmp_path / "tok")
    vocab = tokenizer.get_vocab()
    embeddings = torch.randn(len(vocab), 8, generator=torch.Generator().manual_seed(0))
    embeddings[vocab["great"]] = embeddings[vocab["good"]] * 2 + 0.01  # same direction: the nearest
    embeddings[vocab["##s"]] = embeddings[vocab["good"]]  # a word piece, never a replacement
    embeddings[vocab["[MASK]"]] = embeddings[vocab["good"]]  # a special token, never a replacement
    neighbours = embedding_neighbours(tokenizer, embeddings, ["Good", "film", "unknownword"], top_k=3)
    assert set(neighbours) == {"good", "film"}
    assert neighbours["good"][0] == "great" and "good" not in neighbours["good"]
    assert all(word.isalpha() for row in neighbours.values() for word in row)
    with pytest.raises(ValueError, match="input embeddings"):
        embedding_neighbours(tokenizer, embeddings[:3], ["good"])


def test_augmentation_is_made_once_and_remade_when_its_inputs_change(tmp_path, monkeypatch):
    tokenizer = _tokenizer(tmp_path / "tok")
    embeddings = torch.randn(len(tokenizer.get_vocab()), 8, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "augmented.json"
    copies, record = cached_augmentation(path, TEXTS, tokenizer, embeddings, ratio=2.0, replace_probability=1.0, seed=3)
    assert copies and record["samples"] == len(copies) and record["ratio"] == 2.0 and record["seed"] == 3
    assert json.loads(path.read_text())["texts"] == copies

    def never(*args, **kwargs):
        raise AssertionError("the saved copies should have been reused")

    monkeypatch.setattr("hf_bigsmall.data.augment.embedding_neighbours", never)
    assert cached_augmentation(path, TEXTS, tokenizer, embeddings, ratio=2.0, replace_probability=1.0, seed=3)[0] == copies
    with pytest.raises(AssertionError, match="reused"):  # another seed is another augmentation
        cached_augmentation(path, TEXTS, tokenizer, embeddings, ratio=2.0, replace_probability=1.0, seed=4)
    with pytest.raises(AssertionError, match="reused"):  # other embeddings too
        cached_augmentation(path, TEXTS, tokenizer, embeddings + 1, ratio=2.0, replace_probability=1.0, seed=3)
