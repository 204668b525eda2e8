"""What DistillationTrainer does with the batch and the teacher it is given: label smoothing,
padding, missing teacher folders, datasets that cannot train."""

import pytest
import torch
from transformers import BertForSequenceClassification, GPT2LMHeadModel
from transformers.trainer_pt_utils import LabelSmoother

from hf_bigsmall import DistillationConfig, DistillationTrainer, make_student
from tests.testing_utils import TINY_VOCAB, tiny_bert_config, tiny_gpt2_config


def config(tmp_path, **overrides):
    kwargs = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=1, report_to="none",
                  save_strategy="no", use_cpu=True, seed=0)
    kwargs.update(overrides)
    return DistillationConfig(**kwargs)


def loss_parts(trainer, batch):
    """The unweighted loss parts of one batch, through compute_loss in evaluation mode."""
    trainer.model.eval()
    trainer._eval_parts, trainer._eval_sequences = {}, 0
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    sequences = trainer._eval_sequences
    return loss, {name: float(value) / sequences for name, value in trainer._eval_parts.items()}


def causal_pair():
    teacher = GPT2LMHeadModel(tiny_gpt2_config())
    return teacher, make_student(teacher, num_layers=2)


def padded_causal_batch(pad_labels: bool):
    """Right-padded rows; with `pad_labels` the padding keeps its labels (a collator that copies input_ids)."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, TINY_VOCAB, (4, 10), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row, pad in enumerate((0, 3, 5, 1)):
        if pad:
            attention_mask[row, -pad:] = 0
            input_ids[row, -pad:] = 0
    labels = input_ids.clone()
    if not pad_labels:
        labels[attention_mask == 0] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_label_smoothing_is_applied_like_the_trainers_label_smoother(tmp_path, arch):
    if arch == "bert":
        teacher = BertForSequenceClassification(tiny_bert_config())
        student = make_student(teacher, num_layers=2)
        batch = {"input_ids": torch.randint(1, TINY_VOCAB, (4, 8)), "labels": torch.tensor([0, 1, 1, 0])}
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    else:
        teacher, student = causal_pair()
        batch = padded_causal_batch(pad_labels=False)
    trainer = DistillationTrainer(model=student, teacher_model=teacher,
                                  args=config(tmp_path, label_smoothing_factor=0.2, alpha_kd=0.0, alpha_ce=1.0))
    loss, parts = loss_parts(trainer, batch)
    with torch.no_grad():
        outputs = student(**{k: v for k, v in batch.items() if k != "labels"})
    expected = LabelSmoother(epsilon=0.2)(outputs, batch["labels"], shift_labels=arch == "gpt2")
    unsmoothed = torch.nn.functional.cross_entropy(
        (outputs.logits[:, :-1] if arch == "gpt2" else outputs.logits).reshape(-1, outputs.logits.shape[-1]),
        (batch["labels"][:, 1:] if arch == "gpt2" else batch["labels"]).reshape(-1))
    assert parts["loss_ce"] == pytest.approx(float(expected), rel=1e-5)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert parts["loss_ce"] != pytest.approx(float(unsmoothed), rel=1e-5)  # smoothing really changed it


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_label_smoothing_outside_its_range_is_refused(tmp_path, value):
    with pytest.raises(ValueError, match="label_smoothing_factor"):
        config(tmp_path, label_smoothing_factor=value)


@pytest.mark.parametrize("overrides", [{}, {"alpha_hidden": 1.0}, {"kd_loss": "jsd"}])
def test_causal_kd_leaves_out_padding_that_kept_its_labels(tmp_path, overrides):
    teacher, student = causal_pair()
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path, **overrides))
    _, with_pad_labels = loss_parts(trainer, padded_causal_batch(pad_labels=True))
    _, without = loss_parts(trainer, padded_causal_batch(pad_labels=False))
    for name in ("loss_kd", "loss_hidden", "loss_ce"):  # the task loss leaves padding out too
        if name in without:
            assert with_pad_labels[name] == pytest.approx(without[name], rel=1e-6), name


def _train_first_step(tmp_path, rows, batch_size, accumulation, **overrides):
    """The gradient before the first optimizer step and the first training log of a run on `rows`."""
    from datasets import Dataset

    from tests.testing_utils import GradientRecorder

    torch.manual_seed(0)
    teacher, student = causal_pair()
    recorder = GradientRecorder()
    args = config(tmp_path, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                  max_grad_norm=0.0, logging_steps=1, **overrides)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, callbacks=[recorder],
                                  train_dataset=Dataset.from_dict({k: v.tolist() for k, v in rows.items()}))
    trainer.train()
    return recorder.gradients, trainer.state.log_history[0]


@pytest.mark.parametrize("kd_loss", ["forward_kl", "reverse_kl"])
def test_labels_left_on_padding_change_neither_the_loss_nor_the_gradient(tmp_path, kd_loss):
    """The Trainer's item count follows the positions the losses are taken over (target_mask's rule)."""
    runs = [_train_first_step(tmp_path, padded_causal_batch(pad_labels=pad), 4, 1, kd_loss=kd_loss)
            for pad in (False, True)]
    (clean, clean_log), (padded, padded_log) = runs
    for name in clean:
        torch.testing.assert_close(padded[name], clean[name], rtol=1e-5, atol=1e-7)
    for key in ("loss", "loss_kd", "loss_ce"):
        assert padded_log[key] == pytest.approx(clean_log[key], rel=1e-5), key


def test_gradient_accumulation_stays_exact_with_labels_on_padding(tmp_path):
    rows = padded_causal_batch(pad_labels=True)
    (whole, whole_log), (accumulated, accumulated_log) = [
        _train_first_step(tmp_path, rows, batch_size, accumulation, alpha_hidden=1.0)
        for batch_size, accumulation in ((4, 1), (2, 2))]
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-4, atol=1e-6)
    for key in ("loss", "loss_kd", "loss_ce", "loss_hidden"):
        assert accumulated_log[key] == pytest.approx(whole_log[key], rel=1e-4), key


@pytest.mark.parametrize("missing", ["absolute", "dotted", "nested"])
def test_missing_teacher_folder_says_it_does_not_exist(tmp_path, monkeypatch, missing):
    monkeypatch.chdir(tmp_path)
    name = {"absolute": str(tmp_path / "no-such-teacher"), "dotted": "./no-such-teacher",
            "nested": "runs/today/teacher"}[missing]
    _, student = causal_pair()
    with pytest.raises(ValueError, match="does not exist"):
        DistillationTrainer(model=student, teacher_model=name, args=config(tmp_path))


def test_relative_teacher_folder_never_becomes_base_model(tmp_path, monkeypatch):
    from hf_bigsmall import build_model_card

    monkeypatch.chdir(tmp_path)
    GPT2LMHeadModel(tiny_gpt2_config()).save_pretrained("teacher")
    teacher = GPT2LMHeadModel.from_pretrained("teacher")  # records the relative name it was given
    student = make_student(teacher, num_layers=2)
    trainer = DistillationTrainer(model=student, teacher_model="teacher", args=config(tmp_path))
    trainer.save_model(str(tmp_path / "student"))
    monkeypatch.chdir(tmp_path / "student")  # "teacher" no longer names a folder from here
    card = build_model_card(tmp_path / "student")
    assert card.data.base_model is None
    # the local teacher is named by its folder, never by this machine's path (the card goes to the Hub)
    assert "local model `teacher`" in card.text and str(tmp_path) not in card.text


def test_teacher_built_in_memory_is_no_base_model(tmp_path):
    from hf_bigsmall import build_model_card

    teacher, student = causal_pair()
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path))
    trainer.save_model(str(tmp_path / "student"))
    assert build_model_card(tmp_path / "student").data.base_model is None  # not "GPT2LMHeadModel"


def _rows(n, length, labels=True):
    from datasets import Dataset

    input_ids = torch.randint(1, TINY_VOCAB, (n, length), generator=torch.Generator().manual_seed(0))
    columns = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if labels:
        columns["labels"] = input_ids.clone()
    return Dataset.from_dict(columns)


@pytest.mark.parametrize("case, message", [
    ("empty", "train_dataset is empty"),
    ("too_long", "up to 80 tokens but the student has position embeddings for 64"),
    ("no_labels", "has no labels"),
    ("eval_too_long", "eval_dataset holds sequences of up to 80"),
])
def test_datasets_that_cannot_train_are_refused_before_training(tmp_path, case, message):
    teacher, student = causal_pair()  # GPT-2: 64 learned positions
    train = {"empty": _rows(4, 8).select([]), "too_long": _rows(4, 80), "no_labels": _rows(4, 8, labels=False),
             "eval_too_long": _rows(4, 8)}[case]
    evaluation = _rows(2, 80) if case == "eval_too_long" else None
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path), train_dataset=train,
                            eval_dataset=evaluation)
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())
    assert not (tmp_path / "out").exists()


class _MapRows(torch.utils.data.Dataset):
    """A torch map-style dataset of the rows of a `datasets.Dataset`."""

    def __init__(self, rows):
        self.rows = [{key: torch.tensor(value) for key, value in row.items()} for row in rows]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


class _StreamRows(torch.utils.data.IterableDataset):
    """A torch iterable dataset; with `shared=True` every `iter()` hands out one stream, as a one-pass reader does."""

    def __init__(self, rows, shared=False):
        self.rows = _MapRows(rows).rows
        self.stream = iter(self.rows) if shared else None

    def __iter__(self):
        return self.stream if self.stream is not None else iter(self.rows)


DATASET_KINDS = {
    "torch_map": _MapRows,
    "torch_iterable": _StreamRows,
    "datasets_iterable": lambda rows: _datasets_iterable(rows),
}


def _datasets_iterable(rows):
    from datasets import IterableDataset

    return IterableDataset.from_generator(lambda: iter(rows), features=rows.features)


@pytest.mark.parametrize("kind", DATASET_KINDS)
@pytest.mark.parametrize("case, message", [
    ("too_long", "up to 80 tokens but the student has position embeddings for 64"),
    ("no_labels", "has no labels"),
    ("empty", "train_dataset (is empty|yields no examples)"),
])
def test_any_dataset_type_is_checked_on_its_first_batch(tmp_path, kind, case, message):
    teacher, student = causal_pair()  # GPT-2: 64 learned positions
    rows = {"too_long": _rows(4, 80), "no_labels": _rows(4, 8, labels=False), "empty": _rows(4, 8).select([])}[case]
    with pytest.raises(ValueError, match=message):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path),
                            train_dataset=DATASET_KINDS[kind](rows))
    assert not (tmp_path / "out").exists()


def test_a_collator_that_pads_beyond_the_positions_is_refused(tmp_path):
    from transformers import DataCollatorWithPadding

    teacher, student = causal_pair()
    collator = DataCollatorWithPadding(_tokenizer(), padding="max_length", max_length=96)
    with pytest.raises(ValueError, match="up to 96 tokens"):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path), train_dataset=_rows(4, 8),
                            data_collator=collator)


@pytest.mark.parametrize("shared", [False, True])
def test_iterable_data_is_trained_from_its_first_row(tmp_path, shared):
    # the check reads a fresh iterator, or nothing where the dataset hands out one shared stream
    teacher, student = causal_pair()
    rows = _rows(4, 8)
    seen = []

    def collator(features):
        batch = default_data_collator(features)
        seen.append(batch["input_ids"])
        return batch

    from transformers import default_data_collator

    trainer = DistillationTrainer(model=student, teacher_model=teacher,
                                  args=config(tmp_path, per_device_train_batch_size=2, max_steps=2),
                                  train_dataset=_StreamRows(rows, shared=shared), data_collator=collator)
    seen.clear()  # the check's own batch, if it made one
    trainer.train()
    torch.testing.assert_close(torch.cat(seen[:2]), torch.tensor(rows["input_ids"]))


def _tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocabulary = {f"t{i}": i for i in range(TINY_VOCAB)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocabulary, unk_token="t1")),
                                   pad_token="t0")


def test_label_free_data_is_accepted_when_the_collator_makes_labels_or_alpha_ce_is_zero(tmp_path):
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    teacher, student = causal_pair()
    data = _rows(4, 8, labels=False)
    DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path, alpha_ce=0.0, alpha_kd=1.0),
                        train_dataset=data)
    vocabulary = {f"t{i}": i for i in range(TINY_VOCAB)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocabulary, unk_token="t1")),
                                        pad_token="t0")
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path, logging_steps=1),
                                  train_dataset=data, data_collator=collator)
    trainer.train()
    assert "loss_ce" in trainer.state.log_history[0]


def test_rotary_models_have_no_position_table_to_overflow():
    from transformers import LlamaForCausalLM

    from hf_bigsmall.distillation.data_checks import learned_positions
    from tests.testing_utils import tiny_llama_config

    assert learned_positions(GPT2LMHeadModel(tiny_gpt2_config())) == 64
    assert learned_positions(BertForSequenceClassification(tiny_bert_config())) == 64
    assert learned_positions(LlamaForCausalLM(tiny_llama_config())) is None


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_causal_task_loss_is_the_models_own_shifted_loss(tmp_path, arch):
    """GPT2LMHeadModel leaves `loss_type` unset, which the Trainer's shift rule reads: the shift comes from the head."""
    from transformers import LlamaForCausalLM

    from tests.testing_utils import tiny_llama_config

    teacher = GPT2LMHeadModel(tiny_gpt2_config()) if arch == "gpt2" else LlamaForCausalLM(tiny_llama_config())
    student = make_student(teacher, num_layers=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path, alpha_kd=0.0, alpha_ce=1.0))
    batch = padded_causal_batch(pad_labels=False)
    _, parts = loss_parts(trainer, batch)
    with torch.no_grad():
        own = student(**batch).loss
    assert parts["loss_ce"] == pytest.approx(float(own), rel=1e-5)


@pytest.mark.parametrize("prediction_loss_only", [True, False])
def test_evaluation_divides_by_the_positions_the_losses_are_taken_over(tmp_path, prediction_loss_only):
    """`prediction_step` counts items by the Trainer's own rule (GPT-2's labels unshifted, padding that kept its
    labels counted), not through `get_batch_samples`: eval_loss must not be divided by that count."""
    from datasets import Dataset

    teacher, student = causal_pair()
    trainer = DistillationTrainer(model=student, teacher_model=teacher,
                                  args=config(tmp_path, per_device_eval_batch_size=4,
                                              prediction_loss_only=prediction_loss_only))
    clean = padded_causal_batch(pad_labels=False)
    with torch.no_grad():
        own = float(student(**clean).loss)  # the model's own mean over its shifted targets
    metrics = {pad: trainer.evaluate(Dataset.from_dict({k: v.tolist() for k, v in padded_causal_batch(pad).items()}))
               for pad in (False, True)}
    for pad, found in metrics.items():
        assert found["eval_loss_ce"] == pytest.approx(own, rel=1e-5), pad
    for key in ("eval_loss", "eval_loss_kd"):
        assert metrics[True][key] == pytest.approx(metrics[False][key], rel=1e-5), key


def test_evaluation_of_a_classifier_counts_its_unlabelled_rows(tmp_path):
    from datasets import Dataset

    teacher = BertForSequenceClassification(tiny_bert_config())
    student = make_student(teacher, num_layers=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher,
                                  args=config(tmp_path, per_device_eval_batch_size=4))
    batch = {"input_ids": torch.randint(1, TINY_VOCAB, (4, 8), generator=torch.Generator().manual_seed(3)),
             "labels": torch.tensor([0, -100, 1, -100])}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    _, expected = loss_parts(trainer, batch)  # a mean over the batch's 4 rows
    metrics = trainer.evaluate(Dataset.from_dict({k: v.tolist() for k, v in batch.items()}))
    for name in ("loss_kd", "loss_ce"):
        assert metrics[f"eval_{name}"] == pytest.approx(expected[name], rel=1e-5), name
