"""A fine-tuned teacher is reused only by a run made from the same inputs; any other run says so and retrains."""

import json
import logging

import pytest

from .test_compare import _save_tokenizer
from .testing_utils import requires_scattertext, tiny_bert_config


def save_backbone(folder, **overrides):
    """A tiny BERT with no task head and its WordPiece tokenizer, as a folder a teacher starts from."""
    from transformers import BertModel

    tokenizer = _save_tokenizer(folder)
    BertModel(tiny_bert_config(vocab_size=len(tokenizer), **overrides)).save_pretrained(folder)
    return tokenizer


@requires_scattertext
def test_teacher_is_reused_only_when_made_from_the_same_inputs(tmp_path, caplog):
    from hf_bigsmall.tasks.text_classification import (
        TEACHER_INPUTS_NAME,
        load_classification_dataset,
        train_teacher,
    )

    tokenizer = save_backbone(tmp_path / "small")
    save_backbone(tmp_path / "wide", hidden_size=48)
    data = {n: load_classification_dataset(tokenizer, "embedded/rotten_tomatoes", max_length=16, max_train_samples=n,
                                           max_eval_samples=8) for n in (16, 24)}
    out = tmp_path / "teacher"

    def train(backbone, samples=16, **kwargs):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hf_bigsmall.tasks.text_classification"):
            train_teacher(tmp_path / backbone, data[samples], tokenizer, out, max_steps=1,
                          per_device_train_batch_size=8, use_cpu=True, report_to="none", **kwargs)
        return json.loads((out / "config.json").read_text())["hidden_size"], caplog.text

    assert train("small")[0] == 32
    record = json.loads((out / TEACHER_INPUTS_NAME).read_text())
    assert record["backbone"]["name"] == "small" and record["train_samples"] == 16
    assert str(tmp_path) not in json.dumps(record)  # no local path in a record that may be pushed
    stamp = (out / "model.safetensors").stat().st_mtime_ns

    hidden, log = train("small")  # same inputs: reused, not retrained
    assert "Reusing the fine-tuned teacher" in log and (out / "model.safetensors").stat().st_mtime_ns == stamp

    hidden, log = train("wide")  # another backbone in the same folder: said, and trained again
    assert hidden == 48 and "was not made from these inputs" in log and "backbone" in log

    for change, key in (({"samples": 24}, "train_data"), ({"learning_rate": 1e-3}, "training")):
        hidden, log = train("wide", **change)
        assert "was not made from these inputs" in log and key in log, change

    (out / TEACHER_INPUTS_NAME).unlink()  # a folder that does not say what made it is not trusted either
    hidden, log = train("wide", learning_rate=1e-3)
    assert f"has no {TEACHER_INPUTS_NAME}" in log and (out / TEACHER_INPUTS_NAME).is_file()


@pytest.mark.parametrize("content", ['{"backbone": {"na', "", "[1, 2]", "null"])
def test_a_damaged_teacher_inputs_record_means_retrain_not_a_crash(tmp_path, content):
    from hf_bigsmall.tasks.text_classification import TEACHER_INPUTS_NAME, teacher_differences

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / TEACHER_INPUTS_NAME).write_text(content)
    differences = teacher_differences(tmp_path, {"backbone": {"name": "small"}})
    assert len(differences) == 1 and "cannot be read" in differences[0] and TEACHER_INPUTS_NAME in differences[0]


def test_new_backbone_weights_saved_over_the_old_ones_change_the_fingerprint(tmp_path):
    import datasets
    import torch
    from transformers import BertModel

    from hf_bigsmall.tasks.text_classification import teacher_fingerprint

    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int64")),
                                  "labels": datasets.ClassLabel(names=["neg", "pos"])})
    data = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"input_ids": [[1, 2]], "labels": [0]},
                                                                     features=features)})
    folder = tmp_path / "backbone"
    torch.manual_seed(0)
    BertModel(tiny_bert_config()).save_pretrained(folder)
    before = teacher_fingerprint(folder, data)
    assert teacher_fingerprint(folder, data) == before  # nothing changed: the teacher may be reused
    torch.manual_seed(1)
    BertModel(tiny_bert_config()).save_pretrained(folder)  # same shapes, so the same file sizes
    assert teacher_fingerprint(folder, data)["backbone"] != before["backbone"]
