"""A dataset's ClassLabel ids against a classifier's id2label."""

import pytest
from transformers import PretrainedConfig

from hf_bigsmall.utils.class_labels import dataset_to_model_ids, model_class_names


def _ids(dataset_names, id2label):
    return dataset_to_model_ids(dataset_names, model_class_names(PretrainedConfig(id2label=id2label)))


@pytest.mark.parametrize("id2label", [{0: "LABEL_0", 1: "LABEL_1"}, {0: "0", 1: "1"}])
def test_a_model_whose_class_names_are_its_ids_reads_any_dataset_names_as_ids(id2label):
    """A teacher the kit fine-tuned on labels given as 0 and 1 names its classes "0" and "1", as a fresh head names
    them LABEL_0 and LABEL_1: neither names a class, so a dataset of ["neg", "pos"] is read as the ids it holds
    (it was refused as naming other classes than the model's)."""
    assert _ids(["neg", "pos"], id2label) is None


@pytest.mark.parametrize("dataset_names, id2label, expected", [
    (["neg", "pos"], {0: "pos", 1: "neg"}, {0: 1, 1: 0}),
    (["negative", "positive"], {0: "NEGATIVE", 1: " Positive"}, None),  # case and spaces aside, the same order
    (["1", "2"], {0: "2", 1: "1"}, {0: 1, 1: 0}),  # labels given as 1 and 2 are names, not ids
    (["0", "1"], {0: "neg", 1: "pos"}, None),  # a ClassLabel of the ids spelled out: read as ids
])
def test_a_dataset_is_renumbered_to_the_models_order(dataset_names, id2label, expected):
    assert _ids(dataset_names, id2label) == expected


@pytest.mark.parametrize("dataset_names, id2label", [
    (["neg", "neu", "pos"], {0: "neg", 1: "pos"}),  # a binary model, three classes in the dataset
    (["bad", "good"], {0: "neg", 1: "pos"}),
])
def test_other_classes_are_refused(dataset_names, id2label):
    with pytest.raises(ValueError, match="are not the model's id2label names"):
        _ids(dataset_names, id2label)
