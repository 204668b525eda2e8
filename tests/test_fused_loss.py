import json

import pytest
import torch
import torch.nn.functional as F
from transformers import Gemma2Config, Gemma2ForCausalLM, GPT2LMHeadModel, LlamaForCausalLM

from hf_bigsmall import DistillationConfig, DistillationTrainer, cache_teacher_logits, load_teacher_logits, make_student
from hf_bigsmall.distillation import fused_loss
from hf_bigsmall.distillation.cached_loss import cached_distillation_losses
from hf_bigsmall.distillation.fused_loss import CachedTargets, LMHead, fused_distillation_losses, lm_head_refusal
from hf_bigsmall.losses import KD_LOSSES, kd_loss
from tests.test_distillation import SEQ_LEN, causal_dataset
from tests.testing_utils import TINY_VOCAB, GradientRecorder, tiny_gpt2_config, tiny_llama_config

ROWS, WIDTH, TEACHER_WIDTH, VOCAB = 37, 8, 12, 50


def random_problem(seed=0, bias=True, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(ROWS, WIDTH, generator=generator, dtype=dtype).requires_grad_()
    weight = torch.randn(VOCAB, WIDTH, generator=generator).requires_grad_()
    head_bias = torch.randn(VOCAB, generator=generator).requires_grad_() if bias else None
    teacher_hidden = torch.randn(ROWS, TEACHER_WIDTH, generator=generator)
    teacher_weight, teacher_bias = torch.randn(VOCAB, TEACHER_WIDTH, generator=generator), torch.randn(VOCAB)
    labels = torch.randint(0, VOCAB, (ROWS,), generator=generator)
    labels[::5] = -100
    kd_mask = torch.rand(ROWS, generator=generator) > 0.3
    return hidden, weight, head_bias, teacher_hidden, teacher_weight, teacher_bias, labels, kd_mask


@pytest.mark.parametrize("kind", KD_LOSSES)
@pytest.mark.parametrize("temperature, smoothing", [(1.0, 0.0), (2.0, 0.1)])
def test_online_loss_and_gradients_equal_the_materialised_ones(kind, temperature, smoothing):
    hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, labels, kd_mask = random_problem()
    loss, kd, ce = fused_distillation_losses(
        hidden, LMHead(weight, bias), labels, kd_mask, teacher_hidden, LMHead(teacher_weight, teacher_bias),
        temperature=temperature, kind=kind, kd_weight=0.3, ce_weight=0.7, label_smoothing=smoothing, chunk_size=5)
    fused_gradients = torch.autograd.grad(loss, (hidden, weight, bias))

    logits = F.linear(hidden, weight, bias)
    teacher_logits = F.linear(teacher_hidden, teacher_weight, teacher_bias)
    expected_kd = kd_loss(logits, teacher_logits, temperature, kind, mask=kd_mask, reduction="sum")
    expected_ce = F.cross_entropy(logits, labels, reduction="sum", label_smoothing=smoothing)
    expected = 0.3 * expected_kd + 0.7 * expected_ce
    torch.testing.assert_close(kd, expected_kd.detach(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(ce, expected_ce.detach(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-6, atol=1e-5)
    for fused, reference in zip(fused_gradients, torch.autograd.grad(expected, (hidden, weight, bias))):
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KD_LOSSES)
@pytest.mark.parametrize("temperature, tail_shape", [(1.0, "uniform"), (2.0, "uniform"), (2.0, "student")])
@pytest.mark.parametrize("with_labels, sharp", [(True, False), (False, False), (True, True)])
def test_cached_targets_give_the_materialised_cached_loss(kind, temperature, tail_shape, with_labels, sharp):
    hidden, weight, _, _, _, _, labels, kd_mask = random_problem(bias=False)
    if sharp:  # a confident student: tails below 1e-3 take the exact sum over the excluded tokens
        weight = (weight.detach() * 6).requires_grad_()
    teacher = torch.randn(ROWS, VOCAB).log_softmax(-1)
    logprobs, ids = teacher.topk(5, dim=-1)
    tail = torch.log1p(-logprobs.exp().sum(-1))
    present = labels.ne(-100)
    labels = labels if with_labels else None
    cached = CachedTargets(ids, logprobs, tail, present, tail_shape=tail_shape)
    loss, kd, ce = fused_distillation_losses(hidden, LMHead(weight), labels, kd_mask, cached=cached,
                                             temperature=temperature, kind=kind, kd_weight=0.5, ce_weight=0.25,
                                             chunk_size=4)
    fused_gradients = torch.autograd.grad(loss, (hidden, weight))

    keep = present & kd_mask
    logits = hidden @ weight.T
    expected_kd, expected_ce = cached_distillation_losses(
        logits, ids[keep], logprobs[keep], tail[keep], temperature, kind, mask=keep, labels=labels, reduction="sum",
        tail=tail_shape)
    expected = 0.5 * expected_kd + (0.25 * expected_ce if with_labels else 0)
    if sharp:
        student_tail = logits.log_softmax(-1).scatter(1, ids, float("-inf")).logsumexp(-1)
        assert (student_tail[keep] < -7).any()  # the exact tail is exercised (a mass below 1e-3)
    torch.testing.assert_close(kd, expected_kd.detach(), rtol=1e-6, atol=1e-5)
    if with_labels:
        torch.testing.assert_close(ce, expected_ce.detach(), rtol=1e-6, atol=1e-5)
    for fused, reference in zip(fused_gradients, torch.autograd.grad(expected, (hidden, weight))):
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-6)


def test_cached_targets_with_label_smoothing_give_the_materialised_losses():
    hidden, weight, _, _, _, _, labels, _ = random_problem(bias=False)
    teacher = torch.randn(ROWS, VOCAB).log_softmax(-1)
    logprobs, ids = teacher.topk(5, dim=-1)
    tail = torch.log1p(-logprobs.exp().sum(-1))
    present = labels.ne(-100)
    cached = CachedTargets(ids, logprobs, tail, present)
    loss, kd, ce = fused_distillation_losses(hidden, LMHead(weight), labels, cached=cached, kd_weight=0.5,
                                             ce_weight=0.25, label_smoothing=0.1, chunk_size=4)
    logits = hidden @ weight.T
    expected_kd, _ = cached_distillation_losses(logits, ids[present], logprobs[present], tail[present], mask=present,
                                                reduction="sum")
    expected_ce = F.cross_entropy(logits, labels, reduction="sum", label_smoothing=0.1)
    expected = 0.5 * expected_kd + 0.25 * expected_ce
    torch.testing.assert_close(kd, expected_kd.detach(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(ce, expected_ce.detach(), rtol=1e-6, atol=1e-5)
    expected_gradients = torch.autograd.grad(expected, (hidden, weight))
    for fused, reference in zip(torch.autograd.grad(loss, (hidden, weight)), expected_gradients):
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature, smoothing", [(1.0, 0.0), (2.0, 0.0), (1.0, 0.1)])
def test_cached_targets_of_rows_that_do_not_count_are_ignored_whatever_they_hold(temperature, smoothing):
    """`CachedTargets` ignores the ids of rows without a target: ids out of the vocabulary (a padding value) and
    NaN log-probabilities there give the loss and gradients of zeros there, in place and under autograd alike."""
    hidden, weight, _, _, _, _, labels, kd_mask = random_problem(bias=False)
    teacher = torch.randn(ROWS, VOCAB).log_softmax(-1)
    logprobs, ids = teacher.topk(5, dim=-1)
    tail = torch.log1p(-logprobs.exp().sum(-1))
    present = labels.ne(-100)
    absent = ~present
    padded = (ids.masked_fill(absent[:, None], -1), logprobs.masked_fill(absent[:, None], float("nan")),
              tail.masked_fill(absent, float("nan")))
    zeroed = (ids.masked_fill(absent[:, None], 0), logprobs.masked_fill(absent[:, None], 0.0),
              tail.masked_fill(absent, 0.0))
    padded[0][absent.nonzero()[0]] = VOCAB + 3  # and one row's ids past the vocabulary's end
    results = []
    for targets in (zeroed, padded):
        loss, kd, ce = fused_distillation_losses(hidden, LMHead(weight), labels, kd_mask,
                                                 cached=CachedTargets(*targets, present), temperature=temperature,
                                                 kd_weight=0.5, ce_weight=0.25, label_smoothing=smoothing, chunk_size=4)
        results.append((kd, ce, *torch.autograd.grad(loss, (hidden, weight))))
    for padded_value, zeroed_value in zip(results[1], results[0]):
        torch.testing.assert_close(padded_value, zeroed_value)


@pytest.mark.gpu
@pytest.mark.parametrize("temperature, with_labels", [(1.0, True), (2.0, True), (2.0, False)])
def test_cached_targets_in_place_on_cuda_give_the_materialised_loss(temperature, with_labels):
    """The in-place path writes the log-softmax over its own input (`out=` the source): CUDA's kernels as well as
    the CPU's must read each row before they overwrite it."""
    hidden, weight, _, _, _, _, labels, kd_mask = (value.detach().cuda() if torch.is_tensor(value) else value
                                                   for value in random_problem(bias=False))
    hidden.requires_grad_()
    weight.requires_grad_()
    teacher = torch.randn(ROWS, VOCAB, device="cuda").log_softmax(-1)
    logprobs, ids = teacher.topk(5, dim=-1)
    tail = teacher.scatter(1, ids, float("-inf")).logsumexp(-1)
    present = labels.ne(-100)
    labels = labels if with_labels else None
    loss, kd, ce = fused_distillation_losses(hidden, LMHead(weight), labels, kd_mask,
                                             cached=CachedTargets(ids, logprobs, tail, present),
                                             temperature=temperature, kd_weight=0.5, ce_weight=0.25, chunk_size=4)
    keep = present & kd_mask
    expected_kd, expected_ce = cached_distillation_losses(hidden @ weight.T, ids[keep], logprobs[keep], tail[keep],
                                                          temperature, mask=keep, labels=labels, reduction="sum")
    expected = 0.5 * expected_kd + (0.25 * expected_ce if with_labels else 0)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-5)
    expected_gradients = torch.autograd.grad(expected, (hidden, weight))
    for fused, reference in zip(torch.autograd.grad(loss, (hidden, weight)), expected_gradients):
        torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-5)


def test_task_loss_alone_is_the_models_cross_entropy():
    hidden, weight, bias, _, _, _, labels, _ = random_problem()
    loss, kd, ce = fused_distillation_losses(hidden, LMHead(weight, bias), labels, kd_weight=0.0, ce_weight=1.0,
                                             chunk_size=7)
    expected = F.cross_entropy(F.linear(hidden, weight, bias), labels, reduction="sum")
    assert kd.item() == 0.0
    torch.testing.assert_close(loss, expected.detach())
    for fused, reference in zip(torch.autograd.grad(loss, (hidden, weight, bias)),
                                torch.autograd.grad(expected, (hidden, weight, bias))):
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_soft_target_loss_of_weight_zero_is_reported_and_gives_no_gradient(temperature):
    hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, labels, kd_mask = random_problem()
    loss, kd, ce = fused_distillation_losses(
        hidden, LMHead(weight, bias), labels, kd_mask, teacher_hidden, LMHead(teacher_weight, teacher_bias),
        temperature=temperature, kd_weight=0.0, ce_weight=0.7, chunk_size=5)
    logits = F.linear(hidden, weight, bias)
    expected_kd = kd_loss(logits, F.linear(teacher_hidden, teacher_weight, teacher_bias), temperature, mask=kd_mask,
                          reduction="sum")
    expected = 0.7 * F.cross_entropy(logits, labels, reduction="sum")
    torch.testing.assert_close(kd, expected_kd.detach(), rtol=1e-6, atol=1e-5)
    for fused, reference in zip(torch.autograd.grad(loss, (hidden, weight, bias)),
                                torch.autograd.grad(expected, (hidden, weight, bias))):
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-6)


# reverse KL is infinite there by definition (the student's mass where the teacher has none)
@pytest.mark.parametrize("kind", ["forward_kl", "jsd"])
def test_a_token_the_teacher_rules_out_gives_the_materialised_loss(kind):
    hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, labels, kd_mask = random_problem()
    teacher_bias[7] = float("-inf")  # a vocabulary entry the teacher masks out: -inf log-probabilities, floored
    loss, kd, _ = fused_distillation_losses(
        hidden, LMHead(weight, bias), labels, kd_mask, teacher_hidden, LMHead(teacher_weight, teacher_bias),
        temperature=2.0, kind=kind, kd_weight=0.3, ce_weight=0.7, chunk_size=5)
    logits = F.linear(hidden, weight, bias)
    expected_kd = kd_loss(logits, F.linear(teacher_hidden, teacher_weight, teacher_bias), 2.0, kind, mask=kd_mask,
                          reduction="sum")
    expected = 0.3 * expected_kd + 0.7 * F.cross_entropy(logits, labels, reduction="sum")
    assert torch.isfinite(kd)
    torch.testing.assert_close(kd, expected_kd.detach(), rtol=1e-6, atol=1e-5)
    for fused, reference in zip(torch.autograd.grad(loss, (hidden, weight, bias)),
                                torch.autograd.grad(expected, (hidden, weight, bias))):
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind, temperature, smoothing", [("forward_kl", 1.0, 0.0), ("forward_kl", 2.0, 0.1),
                                                          ("reverse_kl", 2.0, 0.1), ("jsd", 2.0, 0.1)])
def test_compiled_chunks_give_the_materialised_loss_and_gradients(kind, temperature, smoothing):
    hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, labels, kd_mask = random_problem()
    # 37 rows in chunks of 5: the last chunk of 2 is padded to the compiled shape
    loss, kd, ce = fused_distillation_losses(
        hidden, LMHead(weight, bias), labels, kd_mask, teacher_hidden, LMHead(teacher_weight, teacher_bias),
        temperature=temperature, kind=kind, kd_weight=0.3, ce_weight=0.7, label_smoothing=smoothing, chunk_size=5,
        compile_chunks=True)
    assert not fused_loss._compiled_chunk.failed
    logits = F.linear(hidden, weight, bias)
    expected_kd = kd_loss(logits, F.linear(teacher_hidden, teacher_weight, teacher_bias), temperature, kind,
                          mask=kd_mask, reduction="sum")
    expected_ce = F.cross_entropy(logits, labels, reduction="sum", label_smoothing=smoothing)
    torch.testing.assert_close(kd, expected_kd.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ce, expected_ce.detach(), rtol=1e-5, atol=1e-5)
    for fused, reference in zip(torch.autograd.grad(loss, (hidden, weight, bias)),
                                torch.autograd.grad(0.3 * expected_kd + 0.7 * expected_ce, (hidden, weight, bias))):
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-6)


def test_a_chunk_that_fails_to_compile_runs_eagerly_after_one_warning(monkeypatch, caplog):
    def failing_compile(function, **kwargs):
        def compiled(*args, **kwargs):
            raise RuntimeError("no C++ compiler")
        return compiled

    monkeypatch.setattr(fused_loss, "_compiled_chunk", fused_loss._CompiledChunk())
    monkeypatch.setattr(torch, "compile", failing_compile)
    hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, labels, kd_mask = random_problem()
    results = []
    with caplog.at_level("WARNING", logger="hf_bigsmall.distillation.fused_loss"):
        for compile_chunks in (True, False):
            loss, _, _ = fused_distillation_losses(
                hidden, LMHead(weight, bias), labels, kd_mask, teacher_hidden, LMHead(teacher_weight, teacher_bias),
                temperature=2.0, kd_weight=0.3, ce_weight=0.7, chunk_size=5, compile_chunks=compile_chunks)
            results.append((loss, *torch.autograd.grad(loss, (hidden, weight, bias))))
    assert caplog.text.count("torch.compile of the fused loss's chunk failed (RuntimeError: no C++ compiler)") == 1
    for compiled, eager in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KD_LOSSES)
def test_bf16_autocast_stays_close_to_the_materialised_path(kind):
    hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, labels, kd_mask = random_problem()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = fused_distillation_losses(
            hidden, LMHead(weight, bias), labels, kd_mask, teacher_hidden, LMHead(teacher_weight, teacher_bias),
            temperature=2.0, kind=kind, kd_weight=0.5, ce_weight=0.5, chunk_size=6)
        logits = F.linear(hidden, weight, bias)
        teacher_logits = F.linear(teacher_hidden, teacher_weight, teacher_bias)
        assert logits.dtype == torch.bfloat16
        expected = 0.5 * kd_loss(logits, teacher_logits, 2.0, kind, mask=kd_mask, reduction="sum") \
            + 0.5 * F.cross_entropy(logits.float(), labels, reduction="sum")
    fused_gradients = torch.autograd.grad(loss, (hidden, weight, bias))
    # both run the head in bfloat16 and the losses in float32: they differ by bf16 rounding of the
    # gradient (the fused path sums the weight's gradient over chunks in float32)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-3, atol=1e-3)
    for fused, reference in zip(fused_gradients, torch.autograd.grad(expected, (hidden, weight, bias))):
        assert fused.dtype == reference.dtype == torch.float32
        torch.testing.assert_close(fused, reference, rtol=2e-2, atol=2e-2 * float(reference.abs().max()))


def test_rows_that_do_not_count_get_no_gradient():
    hidden, weight, _, teacher_hidden, teacher_weight, _, labels, _ = random_problem(bias=False)
    labels[:] = -100
    kd_mask = torch.zeros(ROWS, dtype=torch.bool)
    kd_mask[3] = True
    loss, _, _ = fused_distillation_losses(hidden, LMHead(weight), labels, kd_mask, teacher_hidden,
                                           LMHead(teacher_weight), chunk_size=4)
    (grad,) = torch.autograd.grad(loss, hidden)
    assert grad[3].abs().sum() > 0 and grad[torch.arange(ROWS) != 3].abs().sum() == 0


def test_bad_input_raises():
    hidden, weight, _, teacher_hidden, teacher_weight, _, labels, _ = random_problem(bias=False)
    with pytest.raises(ValueError, match="share the vocabulary"):
        fused_distillation_losses(hidden, LMHead(weight), labels, None, teacher_hidden, LMHead(teacher_weight[:-1]))
    with pytest.raises(ValueError, match="kind must be one of"):
        fused_distillation_losses(hidden, LMHead(weight), labels, kind="kl")
    with pytest.raises(ValueError, match="labels has 3 rows"):
        fused_distillation_losses(hidden, LMHead(weight), labels[:3])


# ----------------------------------------------------------------------------------------------
# through the trainer
# ----------------------------------------------------------------------------------------------
def build(arch, seed=0):
    torch.manual_seed(seed)
    teacher = GPT2LMHeadModel(tiny_gpt2_config()) if arch == "gpt2" else LlamaForCausalLM(tiny_llama_config())
    return teacher, make_student(teacher, num_layers=2)


def config(tmp_path, **overrides):
    kwargs = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=1, learning_rate=1e-3,
                  logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, seed=0, max_grad_norm=0.0,
                  dataloader_drop_last=True)
    kwargs.update(overrides)
    return DistillationConfig(**kwargs)


class HeadWidthRecorder:
    """The number of positions the student's output layer was run on, per call."""

    def __init__(self, model):
        self.positions = []
        model.get_output_embeddings().register_forward_hook(lambda module, args, out: self.positions.append(out.shape[1]))


def one_step(tmp_path, arch, fused, teacher=True, accumulation=1, **overrides):
    teacher_model, student = build(arch)
    dataset = causal_dataset(n=8).select(range(4))
    if not teacher:
        folder = tmp_path / f"cache-{fused}-{accumulation}"
        cache_teacher_logits(teacher_model, dataset, folder, top_k=8, logprob_dtype="float32")
        dataset, teacher_model = load_teacher_logits(folder, dataset), None
    recorder = GradientRecorder()
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher_model, train_dataset=dataset, callbacks=[recorder],
        args=config(tmp_path, fused_lm_head_loss=fused, per_device_train_batch_size=4 // accumulation,
                    gradient_accumulation_steps=accumulation, **overrides))
    head = HeadWidthRecorder(student)
    trainer.train()
    return recorder.gradients, trainer.state.log_history[0], head.positions


@pytest.mark.parametrize(
    "arch, teacher, overrides",
    [
        ("llama", True, {"temperature": 2.0}),
        ("gpt2", True, {"kd_loss": "jsd", "alpha_hidden": 1.0}),  # GPT-2's head is tied to its embedding
        ("llama", True, {"kd_loss": "reverse_kl", "label_smoothing_factor": 0.1, "kd_chunk_size": 5}),
        ("llama", True, {"alpha_kd": 0.0, "alpha_ce": 1.0}),
        ("llama", True, {"alpha_attention": 0.5, "alpha_hidden": 1.0}),
        ("gpt2", False, {"temperature": 1.0}),
        ("llama", False, {"temperature": 2.0, "kd_loss": "jsd", "alpha_ce": 0.0}),
    ],
)
def test_trainer_step_equals_the_materialised_step(tmp_path, arch, teacher, overrides):
    fused_gradients, fused_logs, fused_head = one_step(tmp_path, arch, None, teacher, **overrides)
    gradients, logs, head = one_step(tmp_path, arch, False, teacher, **overrides)
    assert set(fused_head) == {1} and set(head) == {SEQ_LEN}  # the fused path never makes all the logits
    assert fused_gradients.keys() == gradients.keys()
    for name in gradients:
        torch.testing.assert_close(fused_gradients[name], gradients[name], rtol=1e-4, atol=1e-6)
    for key in ("loss", "loss_kd", "loss_ce", "loss_hidden"):
        if key in logs:
            assert fused_logs[key] == pytest.approx(logs[key], rel=1e-5, abs=1e-7)


@pytest.mark.slow
def test_trainer_step_with_compiled_chunks_equals_the_materialised_step(tmp_path):
    compiled_gradients, compiled_logs, _ = one_step(tmp_path, "llama", True, temperature=2.0, compile_fused_loss=True)
    assert not fused_loss._compiled_chunk.failed
    gradients, logs, _ = one_step(tmp_path, "llama", False, temperature=2.0)
    for name in gradients:
        torch.testing.assert_close(compiled_gradients[name], gradients[name], rtol=1e-4, atol=1e-6)
    for key in ("loss", "loss_kd", "loss_ce"):
        assert compiled_logs[key] == pytest.approx(logs[key], rel=1e-5, abs=1e-7)


def test_trainer_step_under_bf16_autocast_stays_close(tmp_path):
    fused_gradients, fused_logs, _ = one_step(tmp_path, "llama", None, bf16=True)
    gradients, logs, _ = one_step(tmp_path, "llama", False, bf16=True)
    for name in gradients:  # bf16 rounding of the head's matmuls and of the gradient
        scale = float(gradients[name].abs().max())
        torch.testing.assert_close(fused_gradients[name], gradients[name], rtol=3e-2, atol=3e-2 * scale)
    for key in ("loss", "loss_kd", "loss_ce"):
        assert fused_logs[key] == pytest.approx(logs[key], rel=1e-2, abs=1e-4)


@pytest.mark.parametrize("teacher", [True, False])
def test_gradient_accumulation_is_exact(tmp_path, teacher):
    big_batch, big_logs, _ = one_step(tmp_path, "llama", None, teacher, accumulation=1)
    accumulated, accumulated_logs, _ = one_step(tmp_path, "llama", None, teacher, accumulation=2)
    for name in big_batch:
        torch.testing.assert_close(accumulated[name], big_batch[name], rtol=1e-4, atol=1e-6)
    for key in ("loss", "loss_kd", "loss_ce"):
        assert accumulated_logs[key] == pytest.approx(big_logs[key], rel=1e-4)


def test_logits_are_there_when_asked_for(tmp_path):
    teacher, student = build("llama")
    dataset = causal_dataset(n=4)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, train_dataset=dataset, eval_dataset=dataset,
                                  args=config(tmp_path, per_device_eval_batch_size=4))
    batch = {key: torch.tensor(dataset[key]) for key in ("input_ids", "attention_mask", "labels")}
    student.eval()  # outside the training loop (the loss parts go to the evaluation's tally)
    loss, outputs = trainer.compute_loss(student, batch, return_outputs=True)
    assert outputs.logits.shape == (4, 12, TINY_VOCAB)
    fused_loss = trainer.compute_loss(student, batch)
    torch.testing.assert_close(fused_loss, loss, rtol=1e-5, atol=1e-6)
    prediction = trainer.predict(dataset)
    assert prediction.predictions.shape == (4, 12, TINY_VOCAB)


def test_label_free_distillation_equals_the_materialised_loss(tmp_path):
    teacher, student = build("llama")
    dataset = causal_dataset(n=4)
    batch = {key: torch.tensor(dataset[key]) for key in ("input_ids", "attention_mask")}
    losses = []
    for fused in (None, False):
        trainer = DistillationTrainer(model=student, teacher_model=teacher,
                                      args=config(tmp_path, alpha_ce=0.0, fused_lm_head_loss=fused))
        student.eval()
        loss = trainer.compute_loss(student, dict(batch))
        losses.append((loss, torch.autograd.grad(loss, student.lm_head.weight)[0]))
    (fused_loss, fused_grad), (loss, grad) = losses
    assert trainer._fused_refusal == "fused_lm_head_loss=False"
    torch.testing.assert_close(fused_loss, loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fused_grad, grad, rtol=1e-4, atol=1e-7)


def test_label_free_hidden_state_distillation_alone_takes_the_fused_path(tmp_path):
    # alpha_kd = alpha_ce = 0 and no labels: no position is scored through the head, the hidden states still train
    teacher, student = build("llama")
    dataset = causal_dataset(n=4)
    batch = {key: torch.tensor(dataset[key]) for key in ("input_ids", "attention_mask")}
    losses = []
    for fused in (None, False):
        trainer = DistillationTrainer(model=student, teacher_model=teacher,
                                      args=config(tmp_path, alpha_kd=0.0, alpha_ce=0.0, alpha_hidden=1.0,
                                                  fused_lm_head_loss=fused))
        student.eval()  # outside the training loop; return_outputs=False still takes the fused path
        loss = trainer.compute_loss(student, dict(batch))
        layer = student.model.layers[0].mlp.down_proj.weight
        losses.append((loss, torch.autograd.grad(loss, layer)[0]))
    (fused_loss, fused_grad), (loss, grad) = losses
    assert float(loss.detach()) > 0
    torch.testing.assert_close(fused_loss, loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fused_grad, grad, rtol=1e-4, atol=1e-7)


def tiny_gemma2():
    return Gemma2ForCausalLM(Gemma2Config(vocab_size=TINY_VOCAB, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                          intermediate_size=32, pad_token_id=0))


def test_softcapped_logits_refuse_or_fall_back(tmp_path):
    teacher = tiny_gemma2()
    assert "final_logit_softcapping" in lm_head_refusal(teacher)
    with pytest.raises(ValueError, match=r"Gemma2ForCausalLM.*final_logit_softcapping.*fused_lm_head_loss unset"):
        DistillationTrainer(model=make_student(teacher, num_layers=1), teacher_model=teacher,
                            train_dataset=causal_dataset(n=4), args=config(tmp_path, fused_lm_head_loss=True))
    student = make_student(teacher, num_layers=1)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, train_dataset=causal_dataset(n=4),
                                  args=config(tmp_path))
    head = HeadWidthRecorder(student)
    trainer.train()
    assert head.positions == [SEQ_LEN]  # the materialised path, with the model's own softcapping


class ScaledLogitsLlama(LlamaForCausalLM):
    """A model that transforms its logits after the head, under no config field the check knows."""

    def forward(self, input_ids=None, attention_mask=None, logits_to_keep=0, **kwargs):
        outputs = super().forward(input_ids, attention_mask, logits_to_keep=logits_to_keep, **kwargs)
        outputs.logits = outputs.logits * 0.5
        return outputs


def test_a_head_whose_logits_differ_from_its_last_hidden_state_is_refused():
    assert lm_head_refusal(LlamaForCausalLM(tiny_llama_config())) is None
    assert "not its output layer" in lm_head_refusal(ScaledLogitsLlama(tiny_llama_config()))


@pytest.mark.multiprocess
def test_two_processes_equal_one(tmp_path):
    from tests.testing_utils import REPO_ROOT, run_accelerate

    output = tmp_path / "result.json"
    run_accelerate(REPO_ROOT / "tests" / "scripts" / "fused_distill_ddp.py", str(output), timeout=300)
    result = json.loads(output.read_text())
    assert result["world_size"] == 2 and result["student_wrapped_in_ddp"] and result["fused"]
    assert result["find_unused_parameters"] is True  # the search that a head used outside the forward would break

    from tests.scripts.fused_distill_ddp import train

    one_process = train(str(tmp_path / "one"), batch_size=4)
    torch.testing.assert_close(torch.tensor(result["parameters"]), one_process, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("teacher", [True, False])
def test_evaluation_that_keeps_no_logits_takes_the_fused_path_with_the_same_loss(tmp_path, teacher):
    teacher_model, student = build("llama")
    dataset = causal_dataset(n=8)
    if not teacher:
        cache_teacher_logits(teacher_model, dataset, tmp_path / "cache", top_k=8, logprob_dtype="float32")
        dataset, teacher_model = load_teacher_logits(tmp_path / "cache", dataset), None
    trainer = DistillationTrainer(model=student, teacher_model=teacher_model, train_dataset=dataset,
                                  eval_dataset=dataset, args=config(tmp_path, per_device_eval_batch_size=4))
    head = HeadWidthRecorder(student)
    fused = trainer.evaluate()  # no compute_metrics: prediction_loss_only, the logits are dropped
    fused_positions, head.positions = head.positions, []
    materialised = trainer.predict(dataset).metrics  # keeps the logits: the materialised path
    assert set(fused_positions) == {1} and set(head.positions) == {SEQ_LEN}
    for part in ("loss", "loss_kd", "loss_ce"):
        assert fused[f"eval_{part}"] == pytest.approx(materialised[f"test_{part}"], rel=1e-5)
