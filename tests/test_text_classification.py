"""Loading a classification dataset: one label numbering for the training and the evaluation rows."""

import json

import pytest

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


def _classifier(folder, id2label):
    from transformers import BertForSequenceClassification

    from .testing_utils import tiny_bert_config

    BertForSequenceClassification(tiny_bert_config(
        num_labels=len(id2label), id2label=id2label, label2id={name: index for index, name in id2label.items()}
    )).save_pretrained(folder)
    _save_tokenizer(folder)
    return folder


def _neg_pos_dataset(tmp_path):
    from hf_bigsmall.tasks.text_classification import load_classification_dataset

    data = tmp_path / "data"
    data.mkdir()
    _write_split(data / "train.json", ["neg", "pos", "pos"], 12)
    _write_split(data / "test.json", ["pos", "neg"], 6)
    return load_classification_dataset(_save_tokenizer(tmp_path / "tok"), str(data), max_length=8)


def test_a_trained_teacher_numbering_the_classes_otherwise_gets_the_dataset_renumbered_or_refused(tmp_path):
    """A teacher with a head whose id2label is {0: "pos", 1: "neg"} was used as it was with the dataset's ClassLabel
    ["neg", "pos"]: the student learnt every "neg" text as the teacher's "pos"."""
    from transformers import AutoConfig

    from hf_bigsmall.tasks.text_classification import align_labels, classification_teacher, label_names

    dataset = _neg_pos_dataset(tmp_path)
    teacher = _classifier(tmp_path / "teacher", {0: "pos", 1: "neg"})
    as_text = {split: [label_names(dataset)[label] for label in dataset[split]["labels"]] for split in dataset}
    with pytest.raises(ValueError, match="another order.*align_labels"):
        classification_teacher(str(teacher), dataset, None, tmp_path / "out")

    aligned = align_labels(dataset, AutoConfig.from_pretrained(teacher))
    assert label_names(aligned) == ["pos", "neg"] and aligned["eval"].features["labels"].names == ["pos", "neg"]
    for split in dataset:  # every row keeps its class, under the teacher's id
        assert [label_names(aligned)[label] for label in aligned[split]["labels"]] == as_text[split]
    assert aligned["train"]["labels"][:3] == [1, 0, 0]
    assert classification_teacher(str(teacher), aligned, None, tmp_path / "out") == str(teacher)
    assert not (tmp_path / "out").exists()


def test_a_trained_teacher_of_other_classes_is_refused_naming_both(tmp_path):
    from transformers import AutoConfig

    from hf_bigsmall.tasks.text_classification import align_labels, classification_teacher

    dataset = _neg_pos_dataset(tmp_path)
    teacher = _classifier(tmp_path / "teacher", {0: "bad", 1: "good"})
    message = r"\['neg', 'pos'\] are not the model's id2label names \['bad', 'good'\]"
    with pytest.raises(ValueError, match=message):
        classification_teacher(str(teacher), dataset, None, tmp_path / "out")
    with pytest.raises(ValueError, match=message):
        align_labels(dataset, AutoConfig.from_pretrained(teacher))
    # a fresh head's placeholders (LABEL_0, LABEL_1) are no names: nothing to renumber
    fresh = _classifier(tmp_path / "fresh", {0: "LABEL_0", 1: "LABEL_1"})
    assert align_labels(dataset, AutoConfig.from_pretrained(fresh)) is dataset
    assert classification_teacher(str(fresh), dataset, None, tmp_path / "out") == str(fresh)


def test_a_teacher_left_aside_by_a_killed_swap_is_put_back_and_reused(tmp_path, monkeypatch):
    """A run killed between moving the saved teacher aside and renaming the new one into place left the only copy at
    `.teacher.<writer>.replaced`: the next run found no teacher, trained one again and deleted the old as a leftover."""
    import subprocess
    import sys

    from transformers import BertModel

    from hf_bigsmall import trainer as trainer_module
    from hf_bigsmall.tasks.text_classification import TEACHER_INPUTS_NAME, teacher_fingerprint, train_teacher
    from hf_bigsmall.utils.files import publishing
    from hf_bigsmall.utils.writers import machine_tag

    from .testing_utils import tiny_bert_config

    dataset = _neg_pos_dataset(tmp_path)
    backbone = tmp_path / "backbone"
    BertModel(tiny_bert_config()).save_pretrained(backbone)
    fingerprint = teacher_fingerprint(backbone, dataset, num_train_epochs=1.0, learning_rate=1e-4,
                                      per_device_train_batch_size=16, seed=42, max_steps=1)
    teacher = tmp_path / "teacher"
    with publishing(teacher) as partial:  # the teacher an earlier run saved
        (partial / "config.json").write_text("{}")
        (partial / TEACHER_INPUTS_NAME).write_text(json.dumps(fingerprint, indent=2))
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True).stdout.strip()
    teacher.rename(tmp_path / f".teacher.{machine_tag()}-{ended}-0123abcd.replaced")

    def trained_again(*args, **kwargs):
        raise AssertionError("the teacher was trained again")

    monkeypatch.setattr(trainer_module, "BigSmallTrainer", trained_again)
    assert train_teacher(backbone, dataset, None, teacher, max_steps=1) == teacher
    assert json.loads((teacher / TEACHER_INPUTS_NAME).read_text()) == fingerprint
    assert not list(tmp_path.glob(".teacher.*"))


def test_a_dataset_without_class_names_is_taken_as_class_ids_by_a_trained_teacher(tmp_path):
    """Labels that are plain ints (no ClassLabel) have no names to order: a teacher with a head was used as it is,
    and the name check added for ClassLabels must not fail on them (it raised AttributeError)."""
    from datasets import Dataset, DatasetDict
    from transformers import AutoConfig

    from hf_bigsmall.tasks.text_classification import align_labels, classification_teacher

    rows = Dataset.from_dict({"input_ids": [[1, 2, 3]] * 4, "labels": [0, 1, 1, 0]})
    dataset = DatasetDict(train=rows, eval=rows)
    teacher = _classifier(tmp_path / "teacher", {0: "pos", 1: "neg"})
    assert align_labels(dataset, AutoConfig.from_pretrained(teacher)) is dataset
    assert classification_teacher(str(teacher), dataset, None, tmp_path / "out") == str(teacher)


@pytest.mark.parametrize("id2label", [{0: "LABEL_0", 1: "LABEL_1"}, {0: "neg", 1: "pos"}])
def test_a_trained_teacher_with_fewer_classes_than_the_dataset_is_refused(tmp_path, id2label):
    """A binary teacher without class names and a dataset of three classes: nothing to renumber, so both were taken,
    and the distillation met label 2 of a two-class head only once training ran."""
    from transformers import AutoConfig

    from hf_bigsmall.tasks.text_classification import align_labels, classification_teacher, load_classification_dataset

    data = tmp_path / "data"
    data.mkdir()
    _write_split(data / "train.json", ["neg", "neu", "pos"], 12)
    _write_split(data / "test.json", ["pos", "neg", "neu"], 6)
    dataset = load_classification_dataset(_save_tokenizer(tmp_path / "tok"), str(data), max_length=8)
    teacher = _classifier(tmp_path / "teacher", id2label)
    with pytest.raises(ValueError, match=r"3 classes.*2"):
        align_labels(dataset, AutoConfig.from_pretrained(teacher))
    with pytest.raises(ValueError, match=r"3 classes.*2"):
        classification_teacher(str(teacher), dataset, None, tmp_path / "out")


def _labels_dataset(tmp_path, classes):
    from hf_bigsmall.tasks.text_classification import load_classification_dataset

    data = tmp_path / "data"
    data.mkdir()
    _write_split(data / "train.json", classes, 12)
    _write_split(data / "test.json", classes[::-1], 6)
    return load_classification_dataset(_save_tokenizer(tmp_path / "tok"), str(data), max_length=8)


@pytest.mark.parametrize("head, classes, trained_names", [
    # the same classes numbered otherwise: the dataset is renumbered to the head's ids, the head keeps its names
    ({0: "pos", 1: "neg"}, ["neg", "pos", "pos"], ["pos", "neg"]),
    # a dataset whose names are only ids spelled out ("0", "1") names nothing: the head keeps its names
    ({0: "neg", 1: "pos"}, [0, 1, 1], ["0", "1"]),
])
def test_training_a_classifier_further_keeps_its_heads_classes(tmp_path, head, classes, trained_names):
    """A checkpoint with a classification head trained further on a dataset: the dataset's ClassLabel names were
    written over the head's id2label, so {0: "pos", 1: "neg"} became {0: "neg", 1: "pos"} and every "neg" text was
    trained into the row that meant "pos"."""
    from transformers import AutoConfig

    from hf_bigsmall.tasks.text_classification import TEACHER_INPUTS_NAME, label_names, train_teacher

    dataset = _labels_dataset(tmp_path, classes)
    as_text = [label_names(dataset)[label] for label in dataset["train"]["labels"]]
    checkpoint = _classifier(tmp_path / "checkpoint", head)
    teacher = train_teacher(checkpoint, dataset, _save_tokenizer(tmp_path / "tok2"), tmp_path / "teacher",
                            max_steps=1, use_cpu=True, disable_tqdm=True)
    config = AutoConfig.from_pretrained(teacher)
    assert config.id2label == head and config.label2id == {name: index for index, name in head.items()}
    record = json.loads((teacher / TEACHER_INPUTS_NAME).read_text())
    assert record["labels"] == trained_names  # the classes in the ids the head was trained on
    if trained_names == ["pos", "neg"]:  # every row kept its class, under the head's id
        from hf_bigsmall.tasks.text_classification import align_labels

        aligned = align_labels(dataset, config)
        assert [label_names(aligned)[label] for label in aligned["train"]["labels"]] == as_text


def test_training_a_classifier_of_other_classes_further_is_refused_naming_both(tmp_path):
    from hf_bigsmall.tasks.text_classification import train_teacher

    dataset = _labels_dataset(tmp_path, ["neg", "pos", "pos"])
    checkpoint = _classifier(tmp_path / "checkpoint", {0: "bad", 1: "good"})
    with pytest.raises(ValueError, match=r"\['neg', 'pos'\] are not the model's id2label names \['bad', 'good'\]"):
        train_teacher(checkpoint, dataset, _save_tokenizer(tmp_path / "tok2"), tmp_path / "teacher", max_steps=1)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint", "data", "tok", "tok2"]  # nothing written


@pytest.mark.parametrize("head, expected", [
    ({0: "LABEL_0", 1: "LABEL_1"}, {0: "neg", 1: "pos"}),  # a head saved with transformers' placeholders
    ({0: "0", 1: "1"}, {0: "neg", 1: "pos"}),  # one trained on labels given as ids
    # more rows than the dataset has classes: no names for them all, the head is left as it is
    ({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}),
])
def test_a_head_without_class_names_trained_further_takes_the_datasets_names(tmp_path, head, expected):
    """A head whose id2label holds no names kept them after training on ["neg", "pos"]: its rows then meant the
    dataset's classes with nothing saying so, and `align_labels` could not renumber a later dataset that orders
    them otherwise (it takes such a head to have no names), so it was read in the wrong rows without a word."""
    from transformers import AutoConfig

    from hf_bigsmall.tasks.text_classification import train_teacher

    dataset = _labels_dataset(tmp_path, ["neg", "pos", "pos"])
    checkpoint = _classifier(tmp_path / "checkpoint", head)
    teacher = train_teacher(checkpoint, dataset, _save_tokenizer(tmp_path / "tok2"), tmp_path / "teacher",
                            max_steps=1, use_cpu=True, disable_tqdm=True)
    config = AutoConfig.from_pretrained(teacher)
    assert config.id2label == expected and config.label2id == {name: index for index, name in expected.items()}
