"""Matching a dataset's class names with a classifier's `id2label`.

A `datasets.ClassLabel` column numbers its classes in its own order (`["neg", "pos"]`: 0 is "neg"), and
a trained classifier numbers them in the order of its `config.id2label`. Where both carry names and the
orders differ, reading the dataset's ids as the model's ids scores (or trains) every example against
the wrong class without a word. `dataset_to_model_ids` says how to renumber the dataset, or refuses
names that are not the same classes.

Names that mean "no names" are ignored, on either side: transformers' placeholders of a fresh head
(`LABEL_0`, `LABEL_1`, ...) and the class ids spelled out (`"0"`, `"1"`, ...: a `ClassLabel` made from a
class count, or a model fine-tuned on labels given as ids).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def folded_class_name(name: str) -> str:
    """The class name with case and runs of spaces ignored: "POSITIVE" and " positive" are the same class."""
    return " ".join(str(name).split()).casefold()


def model_class_names(config) -> dict[int, str] | None:
    """A classifier's `id2label`, or None when it holds only transformers' placeholder names (`LABEL_0`, ...) or its
    ids spelled out (`"0"`, `"1"`: a model fine-tuned on labels given as class ids, as `train_teacher` names them)."""
    names = {int(index): str(name) for index, name in (getattr(config, "id2label", None) or {}).items()}
    return None if all(name in (str(index), f"LABEL_{index}") for index, name in names.items()) else names


def dataset_class_names(names: Sequence[str] | None) -> list[str] | None:
    """A `ClassLabel`'s names, or None when they are only the class ids spelled out or transformers' placeholders."""
    names = [str(name) for name in (names or [])]
    generic = all(name in (str(index), f"LABEL_{index}") for index, name in enumerate(names))
    return None if generic else names


def dataset_to_model_ids(dataset_names: Sequence[str] | None, id2label: Mapping[int, str] | None,
                         what: str = "the dataset") -> dict[int, int] | None:
    """How to renumber a dataset's class ids so they mean the model's classes.

    Args:
        dataset_names: the label column's `ClassLabel.names` (None or placeholders: nothing to check).
        id2label: the model's class names (`model_class_names(config)`; None: a head without names).
        what: how the dataset is called in an error message.

    Returns:
        None when there is nothing to renumber (either side has no names, or both number the classes alike),
        else `{dataset id: model id}` for every class.

    Raises:
        ValueError: the names are not the same classes; the message names both lists and the fix.
    """
    dataset_names = dataset_class_names(dataset_names)
    if dataset_names is None or not id2label:
        return None
    model_names = [id2label[index] for index in sorted(id2label)]
    model_ids = {folded_class_name(name): index for index, name in id2label.items()}
    folded = sorted(folded_class_name(name) for name in dataset_names)
    if folded != sorted(model_ids) or len(model_ids) != len(id2label):
        raise ValueError(f"The class names of {what} {dataset_names} are not the model's id2label names {model_names}: "
                         "every example would be read as the class of the same number in the model. If they are the "
                         "same classes under other names, rename the dataset's ClassLabel to the model's names "
                         "(dataset.cast_column with ClassLabel(names=...)); else use a model trained on these classes.")
    mapping = {index: model_ids[folded_class_name(name)] for index, name in enumerate(dataset_names)}
    return None if all(index == model_id for index, model_id in mapping.items()) else mapping
