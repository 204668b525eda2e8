"""`fused_loss_backend="liger"`: Liger-Kernel's fused linear JSD loss in place of the built-in fused loss.

The option's checks run everywhere; the equality of losses and gradients with the built-in fused loss needs
liger-kernel (`pip install "hf-bigsmall[liger]"`; its `chunked_loss` ops are plain PyTorch and run on CPU) and
skips without it.
"""

import logging

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from hf_bigsmall import (
    DistillationConfig,
    DistillationTrainer,
    Divergence,
    make_student,
    register_divergence,
)
from hf_bigsmall.distillation import liger_loss
from hf_bigsmall.distillation.fused_loss import CachedTargets, LMHead, fused_distillation_losses
from tests.test_distillation import causal_dataset
from tests.test_fused_loss import ROWS, build, config, one_step, random_problem, tiny_gemma2
from tests.testing_utils import TINY_VOCAB

register_divergence(Divergence("test_liger_total_variation", lambda s, t: 0.5 * (s.exp() - t.exp()).abs().sum(-1),
                               "total variation distance"), overwrite=True)
needs_liger = pytest.mark.skipif(not liger_loss.is_liger_kernel_available(),
                                 reason=f"liger-kernel >= {liger_loss.LIGER_MIN_VERSION} is not installed: "
                                        'pip install "hf-bigsmall[liger]"')


@pytest.fixture
def liger_installed(monkeypatch):
    """liger-kernel taken as installed, for checks that refuse before anything of it runs."""
    monkeypatch.setattr(liger_loss, "liger_kernel_version", lambda: "0.8.5")


@pytest.fixture
def liger_missing(monkeypatch):
    monkeypatch.setattr(liger_loss, "liger_kernel_version", lambda: None)


# ----------------------------------------------------------------------------------------------
# the option
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "settings, message",
    [
        ({"fused_loss_backend": "triton"}, "fused_loss_backend must be one of"),
        ({"kd_loss": "test_liger_total_variation"}, r"kd_loss='test_liger_total_variation' is not one Liger-Kernel"),
        ({"label_smoothing_factor": 0.1}, "label_smoothing_factor=0.1.*no label smoothing"),
        ({"alpha_kd": 0.0, "alpha_ce": 1.0}, r"no soft targets \(alpha_kd=0"),
        ({"teacher_logits": "somewhere"}, "teacher-logit cache"),
        ({"fused_lm_head_loss": False}, "fused_lm_head_loss=False turns it off"),
    ],
)
def test_settings_liger_cannot_compute_are_refused_naming_the_fallback(tmp_path, liger_installed, settings, message):
    settings = {"fused_loss_backend": "liger", **settings}
    with pytest.raises(ValueError, match=message) as error:
        DistillationConfig(output_dir=str(tmp_path / "out"), report_to="none", **settings)
    if settings["fused_loss_backend"] == "liger" and "fused_lm_head_loss" not in settings:
        assert "fused_loss_backend='torch'" in str(error.value)  # the fallback
    assert not (tmp_path / "out").exists()


def test_a_missing_or_old_liger_kernel_names_the_extra(tmp_path, monkeypatch):
    for installed, message in ((None, "not installed"), ("0.6.2", "needs liger-kernel >= 0.6.4, found 0.6.2")):
        monkeypatch.setattr(liger_loss, "liger_kernel_version", lambda installed=installed: installed)
        with pytest.raises(ImportError, match=message) as error:
            DistillationConfig(output_dir=str(tmp_path), report_to="none", fused_loss_backend="liger")
        assert 'pip install "hf-bigsmall[liger]"' in str(error.value)
    DistillationConfig(output_dir=str(tmp_path), report_to="none", fused_loss_backend="torch")  # needs nothing


def test_the_function_refuses_what_liger_cannot_compute(liger_installed):
    hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, labels, kd_mask = random_problem()
    teacher = {"teacher_hidden": teacher_hidden, "teacher_head": LMHead(teacher_weight, teacher_bias)}
    with pytest.raises(ValueError, match="backend must be one of"):
        fused_distillation_losses(hidden, LMHead(weight, bias), labels, backend="triton")
    cached = CachedTargets(torch.zeros(ROWS, 2, dtype=torch.long), torch.zeros(ROWS, 2), torch.zeros(ROWS),
                           labels.ne(-100))
    with pytest.raises(ValueError, match="teacher-logit cache.*backend='torch'"):
        fused_distillation_losses(hidden, LMHead(weight), labels, cached=cached, backend="liger")
    with pytest.raises(ValueError, match="no soft targets"):
        fused_distillation_losses(hidden, LMHead(weight), labels, backend="liger")
    with pytest.raises(ValueError, match="no label smoothing"):
        fused_distillation_losses(hidden, LMHead(weight), labels, **teacher, label_smoothing=0.1, backend="liger")
    # Liger counts the soft target exactly at the labelled rows
    with pytest.raises(ValueError, match="kd_mask equal to labels != -100"):
        fused_distillation_losses(hidden, LMHead(weight), labels, kd_mask, **teacher, backend="liger")


def test_use_liger_kernel_falls_back_with_one_warning_where_liger_cannot_apply(tmp_path, liger_installed, caplog):
    teacher, student = build("llama")
    args = config(tmp_path, use_liger_kernel=True, label_smoothing_factor=0.1)
    with caplog.at_level(logging.WARNING, logger="hf_bigsmall"):
        trainer = DistillationTrainer(model=student, teacher_model=teacher, train_dataset=causal_dataset(n=4),
                                      args=args)
    warnings = [record.getMessage() for record in caplog.records if "use_liger_kernel=True" in record.getMessage()]
    assert len(warnings) == 1 and "no label smoothing" in warnings[0]
    assert trainer._fused_backend == "torch"
    trainer = DistillationTrainer(model=student, teacher_model=teacher, train_dataset=causal_dataset(n=4),
                                  args=config(tmp_path, use_liger_kernel=True))
    assert trainer._fused_backend == "liger"  # as TRL's GKD trainer does with use_liger_kernel
    trainer = DistillationTrainer(model=student, teacher_model=teacher, train_dataset=causal_dataset(n=4),
                                  args=config(tmp_path, use_liger_kernel=True, fused_loss_backend="torch"))
    assert trainer._fused_backend == "torch"


def test_use_liger_kernel_without_liger_keeps_the_built_in_loss(tmp_path, liger_missing, caplog):
    teacher, student = build("llama")
    with caplog.at_level(logging.WARNING, logger="hf_bigsmall"):
        trainer = DistillationTrainer(model=student, teacher_model=teacher, train_dataset=causal_dataset(n=4),
                                      args=config(tmp_path, use_liger_kernel=True))
    assert trainer._fused_backend == "torch"
    assert any("liger-kernel >= 0.6.4 is not installed" in record.getMessage() for record in caplog.records)


def test_evaluation_under_use_liger_kernel_asks_the_models_for_their_logits(tmp_path, liger_missing):
    # the Trainer's prediction_step adds skip_logits=True under use_liger_kernel; a student whose forward Liger
    # patched (at train()) raises on it without labels, and the materialised losses need the logits
    teacher, student = build("llama")
    calls = []
    for model in (student, teacher):
        model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(sorted(kwargs)), with_kwargs=True)
    dataset = causal_dataset(n=8)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, train_dataset=dataset, eval_dataset=dataset,
                                  args=config(tmp_path, use_liger_kernel=True, fused_lm_head_loss=False,
                                              per_device_eval_batch_size=4))
    assert "eval_loss_kd" in trainer.evaluate()
    assert calls and not any("skip_logits" in kwargs for kwargs in calls)


def test_a_model_off_the_fused_path_refuses_an_explicit_liger_backend(tmp_path, liger_installed):
    teacher = tiny_gemma2()  # final_logit_softcapping: the materialised path
    with pytest.raises(ValueError, match=r"fused_loss_backend='liger' but the student \(Gemma2ForCausalLM\).*"
                                         "final_logit_softcapping.*fused_loss_backend='torch'"):
        DistillationTrainer(model=make_student(teacher, num_layers=1), teacher_model=teacher,
                            train_dataset=causal_dataset(n=4), args=config(tmp_path, fused_loss_backend="liger"))
    teacher = BertForSequenceClassification(BertConfig(vocab_size=TINY_VOCAB, hidden_size=16, num_hidden_layers=2,
                                                       num_attention_heads=2, intermediate_size=32))
    with pytest.raises(ValueError, match="not a decoder-only causal LM"):
        DistillationTrainer(model=make_student(teacher, num_layers=1), teacher_model=teacher,
                            args=config(tmp_path, fused_loss_backend="liger"))


# ----------------------------------------------------------------------------------------------
# the same losses and gradients as the built-in fused loss (needs liger-kernel)
# ----------------------------------------------------------------------------------------------
def both_backends(hidden, weight, bias, labels, kd_mask, teacher_hidden, teacher_head, **kwargs):
    results = []
    for backend in ("torch", "liger"):
        loss, kd, ce = fused_distillation_losses(hidden, LMHead(weight, bias), labels, kd_mask, teacher_hidden,
                                                 teacher_head, backend=backend, **kwargs)
        parameters = [tensor for tensor in (hidden, weight, bias) if tensor is not None]
        results.append((loss, kd, ce, torch.autograd.grad(loss, parameters)))
    return results


@needs_liger
@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature, with_labels", [(1.0, True), (2.0, True), (2.0, False)])
def test_liger_gives_the_built_in_fused_losses_and_gradients(kind, temperature, with_labels):
    hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, labels, _ = random_problem()
    kd_mask = labels.ne(-100) if with_labels else None  # the rows the trainer gives: both losses at each
    (loss, kd, ce, gradients), (liger, liger_kd, liger_ce, liger_gradients) = both_backends(
        hidden, weight, bias, labels if with_labels else None, kd_mask, teacher_hidden,
        LMHead(teacher_weight, teacher_bias), temperature=temperature, kind=kind, jsd_beta=0.3 if kind == "jsd" else None,
        kd_weight=0.3, ce_weight=0.7, chunk_size=5)
    assert kd > 0 and (ce > 0) == with_labels
    for ours, theirs in ((loss, liger), (kd, liger_kd), (ce, liger_ce)):
        torch.testing.assert_close(theirs.detach(), ours.detach(), rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(gradients, liger_gradients):
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)


@needs_liger
def test_liger_leaves_rows_that_count_nowhere_without_gradient():
    hidden, weight, _, teacher_hidden, teacher_weight, _, labels, _ = random_problem(bias=False)
    (loss, _, _, gradients), (liger, _, _, liger_gradients) = both_backends(
        hidden, weight, None, labels, labels.ne(-100), teacher_hidden, LMHead(teacher_weight), kd_weight=0.5,
        ce_weight=0.5, chunk_size=4)
    torch.testing.assert_close(liger.detach(), loss.detach(), rtol=1e-5, atol=1e-5)
    assert liger_gradients[0][labels.eq(-100)].abs().sum() == 0
    for ours, theirs in zip(gradients, liger_gradients):
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)


@needs_liger
def test_liger_names_a_broken_teacher():
    hidden, weight, _, teacher_hidden, teacher_weight, teacher_bias, labels, _ = random_problem()

    def check(logits, rows):
        if not torch.isfinite(logits.amax(-1)).all():
            raise ValueError("the teacher's logits are NaN or infinite")

    for value, message in ((float("nan"), "NaN or infinite"), (-float("inf"), "-inf logits.*fused_loss_backend='torch'")):
        broken = teacher_bias.clone()
        broken[3] = value
        with pytest.raises(ValueError, match=message):
            fused_distillation_losses(hidden, LMHead(weight), labels, labels.ne(-100), teacher_hidden,
                                      LMHead(teacher_weight, broken), backend="liger", check_teacher_logits=check)


@needs_liger
@pytest.mark.parametrize(
    "arch, overrides",
    [
        ("llama", {"temperature": 2.0}),
        ("gpt2", {"kd_loss": "jsd", "alpha_hidden": 1.0}),  # a head tied to the embedding, plus a hidden-state loss
        ("llama", {"kd_loss": "reverse_kl", "alpha_ce": 0.0, "kd_chunk_size": 5}),
    ],
)
def test_trainer_step_with_liger_equals_the_built_in_fused_step(tmp_path, arch, overrides):
    liger_gradients, liger_logs, liger_head = one_step(tmp_path, arch, None, fused_loss_backend="liger", **overrides)
    gradients, logs, _ = one_step(tmp_path, arch, None, fused_loss_backend="torch", **overrides)
    assert set(liger_head) == {1}  # the logits were never made
    assert liger_gradients.keys() == gradients.keys()
    for name in gradients:
        torch.testing.assert_close(liger_gradients[name], gradients[name], rtol=1e-4, atol=1e-6)
    for key in ("loss", "loss_kd", "loss_ce", "loss_hidden"):
        if key in logs:
            assert liger_logs[key] == pytest.approx(logs[key], rel=1e-5, abs=1e-7)


@needs_liger
def test_label_free_distillation_with_liger_equals_the_built_in_fused_loss(tmp_path):
    teacher, student = build("llama")
    dataset = causal_dataset(n=4)
    batch = {key: torch.tensor(dataset[key]) for key in ("input_ids", "attention_mask")}
    assert batch["attention_mask"].eq(0).any()  # padded positions carry no soft target
    losses = []
    for backend in ("liger", "torch"):
        trainer = DistillationTrainer(model=student, teacher_model=teacher,
                                      args=config(tmp_path, alpha_ce=0.0, temperature=2.0, fused_loss_backend=backend))
        student.eval()
        loss = trainer.compute_loss(student, dict(batch))
        losses.append((loss, torch.autograd.grad(loss, (student.lm_head.weight, student.model.norm.weight))))
    (liger, liger_gradients), (loss, gradients) = losses
    torch.testing.assert_close(liger, loss, rtol=1e-5, atol=1e-7)
    for ours, theirs in zip(gradients, liger_gradients):
        torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-7)


@needs_liger
@pytest.mark.parametrize("kind", ["forward_kl", "jsd"])
def test_liger_under_bf16_autocast_stays_close_to_the_built_in_fused_loss(kind):
    hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, labels, _ = random_problem()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (loss, kd, ce, gradients), (liger, liger_kd, liger_ce, liger_gradients) = both_backends(
            hidden, weight, bias, labels, labels.ne(-100), teacher_hidden, LMHead(teacher_weight, teacher_bias),
            temperature=2.0, kind=kind, kd_weight=0.3, ce_weight=0.7, chunk_size=5)
    for ours, theirs in ((loss, liger), (kd, liger_kd), (ce, liger_ce)):  # bf16 rounding of the head's matmuls
        torch.testing.assert_close(theirs.detach(), ours.detach(), rtol=2e-2, atol=1e-3)
    for ours, theirs in zip(gradients, liger_gradients):
        torch.testing.assert_close(theirs, ours, rtol=3e-2, atol=3e-2 * float(ours.abs().max()))


@pytest.mark.slow
@needs_liger
def test_compiled_liger_matches_and_does_not_recompile_for_each_new_weight():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    _, weight, _, _, teacher_weight, _, _, _ = random_problem(bias=False)
    generator = torch.Generator().manual_seed(1)
    for step, rows in enumerate((40, 40, 36, 40)):  # a new normalising count every step, new row counts
        hidden = torch.randn(rows, weight.shape[1], generator=generator).requires_grad_()
        teacher_hidden = torch.randn(rows, teacher_weight.shape[1], generator=generator)
        labels = torch.randint(0, weight.shape[0], (rows,), generator=generator)
        results = []
        for backend in ("torch", "liger"):  # only Liger's chunk is compiled
            loss, _, _ = fused_distillation_losses(
                hidden, LMHead(weight), labels, None, teacher_hidden, LMHead(teacher_weight), kind="jsd",
                temperature=2.0, kd_weight=0.5 / (rows + step), ce_weight=0.3 / (rows + step), chunk_size=10,
                compile_chunks=backend == "liger", backend=backend)
            results.append((loss.detach(), *torch.autograd.grad(loss, (hidden, weight))))
        for ours, theirs in zip(*results):
            torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    # compiled once, and once more when the chunks' row count changes (a dynamic shape), not once a step
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])


@pytest.mark.gpu
@needs_liger
@pytest.mark.parametrize("kind", ["forward_kl", "jsd"])
def test_liger_on_cuda_gives_the_built_in_fused_losses_and_gradients(kind):
    problem = [None if tensor is None else tensor.detach().cuda().requires_grad_(tensor.requires_grad)
               for tensor in random_problem()]
    hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, labels, _ = problem
    labels = labels.detach()
    (loss, kd, ce, gradients), (liger, liger_kd, liger_ce, liger_gradients) = both_backends(
        hidden, weight, bias, labels, labels.ne(-100), teacher_hidden, LMHead(teacher_weight, teacher_bias),
        temperature=2.0, kind=kind, kd_weight=0.3, ce_weight=0.7, chunk_size=8, compile_chunks=True)
    for ours, theirs in ((loss, liger), (kd, liger_kd), (ce, liger_ce)):
        torch.testing.assert_close(theirs.detach(), ours.detach(), rtol=1e-4, atol=1e-4)
    for ours, theirs in zip(gradients, liger_gradients):  # TF32 matmuls may differ from ours in the last bits
        torch.testing.assert_close(theirs, ours, rtol=1e-3, atol=1e-4)
