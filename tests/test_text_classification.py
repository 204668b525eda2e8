"""Loading a classification dataset: one label numbering for the training and the evaluation rows."""

import json

from .test_compare import WORDS, _save_tokenizer


def _write_split(path, classes, rows):
    path.write_text("\n".join(json.dumps({"text": " ".join(WORDS[i % 7: i % 7 + 4]), "label": classes[i % len(classes)]})
                              for i in range(rows)))


def test_an_eval_split_missing_a_class_keeps_the_training_numbering(tmp_path):
    """Each split was encoded alone: without 'neg', the eval split numbered 'neu' 0 where training had it 1."""
    from hf_bigsmall.tasks.text_classification import label_names, load_classification_dataset

    data = tmp_path / "data"
    data.mkdir()
    _write_split(data / "train.json", ["neg", "neu", "pos"], 12)
    _write_split(data / "test.json", ["neu", "pos"], 6)
    dataset = load_classification_dataset(_save_tokenizer(tmp_path / "tok"), str(data), max_length=8)
    assert label_names(dataset) == ["neg", "neu", "pos"]
    assert dataset["eval"].features["labels"].names == ["neg", "neu", "pos"]
    assert dataset["eval"]["labels"] == [1, 2, 1, 2, 1, 2]
    assert dataset["train"]["labels"][:3] == [0, 1, 2]
