"""The divergence registry: built-ins registered like user code, and a user's divergence on every loss path."""

import copy
import json
import pickle

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from hf_bigsmall import (
    DistillationConfig,
    DistillationTrainer,
    Divergence,
    cache_teacher_logits,
    divergence_names,
    get_divergence,
    load_teacher_logits,
    register_divergence,
)
from hf_bigsmall.distillation.cached_loss import cached_distillation_losses
from hf_bigsmall.distillation.divergences import rows_and_logit_gradient
from hf_bigsmall.distillation.fused_loss import CachedTargets, LMHead, fused_distillation_losses
from hf_bigsmall.losses import KD_LOSSES, kd_loss
from tests.test_distillation import causal_dataset
from tests.test_fused_loss import build, config, random_problem
from tests.testing_utils import tiny_llama_config


def user_forward_kl(student_logprobs, teacher_logprobs):
    """Forward KL written as a user would, with no closed-form gradient: autograd supplies it."""
    return (teacher_logprobs.exp() * (teacher_logprobs - student_logprobs)).sum(-1)


def total_variation(student_logprobs, teacher_logprobs):
    return 0.5 * (student_logprobs.exp() - teacher_logprobs.exp()).abs().sum(-1)


def alpha_divergence(student_logprobs, teacher_logprobs, alpha=0.5):
    """Amari's alpha-divergence, (1 - sum t^alpha s^(1 - alpha)) / (alpha (1 - alpha))."""
    mixed = torch.logsumexp(alpha * teacher_logprobs + (1 - alpha) * student_logprobs, dim=-1)
    return -torch.expm1(mixed) / (alpha * (1 - alpha))


def _check_alpha(params):
    if not 0 < params["alpha"] < 1:
        raise ValueError(f"alpha must be strictly between 0 and 1, got {params['alpha']}.")


register_divergence(Divergence("test_user_forward_kl", user_forward_kl, "forward KL, user-written"), overwrite=True)
register_divergence(Divergence("test_total_variation", total_variation, "total variation distance"), overwrite=True)
register_divergence(Divergence("test_alpha", alpha_divergence, "Amari alpha-divergence", params={"alpha": 0.5},
                               check_params=_check_alpha), overwrite=True)


# ----------------------------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------------------------
def test_builtins_are_registered_entries_with_a_card_line():
    assert divergence_names()[:3] == KD_LOSSES
    for name in KD_LOSSES:
        entry = get_divergence(name)
        assert entry.name == name and entry.description and entry.gradient is not None
    assert dict(get_divergence("jsd").params) == {"beta": 0.5}


def test_unknown_name_lists_the_registered_ones_and_the_fix():
    with pytest.raises(ValueError, match=r"got 'kl'.*register_divergence"):
        get_divergence("kl")
    with pytest.raises(ValueError, match="test_total_variation"):
        get_divergence("kl")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"name": "", "function": total_variation, "description": "x"}, ValueError, "non-empty name"),
    ({"name": "x", "function": "not callable", "description": "x"}, TypeError, "function must be callable"),
    ({"name": "x", "function": total_variation, "description": ""}, ValueError, "description"),
    ({"name": "x", "function": total_variation, "description": "x", "params": {"a": "big"}}, TypeError, "a number"),
    ({"name": "x", "function": total_variation, "description": "x", "gradient": 3}, TypeError, "gradient"),
])
def test_entries_are_checked_when_built(kwargs, error, message):
    with pytest.raises(error, match=message):
        Divergence(**kwargs)


def _no_alpha(student_logprobs, teacher_logprobs):
    return (student_logprobs - teacher_logprobs).sum(-1)


def test_an_unknown_name_says_every_process_must_register_it():
    # under torchrun / accelerate launch each process builds its own config from its own registry
    with pytest.raises(ValueError, match=r"register_divergence\(\.\.\.\) before building the config.*every process"):
        DistillationConfig(output_dir="unused", kd_loss="registered_on_rank_0_only")


def test_an_entry_can_be_copied_and_pickled():
    # objects that hold an entry are deep-copied (Trainer, accelerate) or pickled to spawned workers
    entry = get_divergence("jsd")
    for copied in (copy.deepcopy(entry), pickle.loads(pickle.dumps(entry))):
        assert copied == entry and dict(copied.params) == {"beta": 0.5}
        with pytest.raises(TypeError):
            copied.params["beta"] = 0.2  # still read-only


@pytest.mark.parametrize("kwargs, message", [
    # declares a parameter its function does not take: a TypeError at every loss call otherwise
    ({"function": _no_alpha, "params": {"alpha": 0.5}}, r"function.*\(student_logprobs, teacher_logprobs"),
    ({"function": lambda logprobs: logprobs.sum(-1)}, r"function.*\(student_logprobs, teacher_logprobs"),
    ({"function": total_variation, "gradient": lambda student_logprobs: student_logprobs}, "gradient"),
    ({"function": total_variation, "check_params": lambda: None}, "check_params"),
])
def test_an_entry_whose_functions_cannot_take_the_documented_arguments_is_refused_when_built(kwargs, message):
    with pytest.raises(TypeError, match=message):
        Divergence("test_bad_signature", description="x", **kwargs)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_a_divergence_that_does_not_give_one_value_per_row_is_named(chunk_size):
    register_divergence(Divergence("test_summed", lambda s, t: (t.exp() * (t - s)).sum(), "summed over rows"),
                        overwrite=True)
    with pytest.raises(ValueError, match=r"test_summed.*one value per row, shape \(\d,\), got \(\)"):
        kd_loss(torch.randn(4, 10), torch.randn(4, 10), kind="test_summed", chunk_size=chunk_size)


def test_a_name_is_registered_once_unless_overwritten():
    entry = Divergence("test_twice", total_variation, "total variation distance")
    register_divergence(entry, overwrite=True)
    with pytest.raises(ValueError, match="already registered.*overwrite=True"):
        register_divergence(entry)
    with pytest.raises(TypeError, match="takes a Divergence"):
        register_divergence(total_variation)


def test_declared_parameters_are_checked():
    entry = get_divergence("test_alpha")
    assert entry.resolve_params({"alpha": 0.25}) == {"alpha": 0.25}
    with pytest.raises(ValueError, match="takes no parameter 'beta'"):
        entry.resolve_params({"beta": 0.2})
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        entry.resolve_params({"alpha": 1.0})


# the JSD's mixture is computed one way inside (0, 1) and another at its ends, where it is one distribution
@pytest.mark.parametrize("kind, beta", [*((kind, 0.3) for kind in KD_LOSSES), ("jsd", 0.0), ("jsd", 1.0),
                                        ("jsd", 0.9)])
def test_closed_form_gradients_equal_autograd(kind, beta):
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(6, 11, generator=generator)
    teacher = 3 * torch.randn(6, 11, generator=generator)
    log_s, log_t = logits.log_softmax(-1), teacher.log_softmax(-1)
    entry = get_divergence(kind)
    params = entry.resolve_params({"beta": beta} if kind == "jsd" else {})
    values, grad = rows_and_logit_gradient(entry, params, log_s, log_t.clone())
    without = Divergence("x", entry.function, "x", params=entry.params)  # autograd alone
    reference_values, reference_grad = rows_and_logit_gradient(without, params, log_s, log_t.clone())
    leaf = logits.clone().requires_grad_()
    (autograd,) = torch.autograd.grad(entry.function(leaf.log_softmax(-1), log_t, **params).sum(), leaf)
    torch.testing.assert_close(values, reference_values)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, autograd, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# a user's divergence on every path: the same loss and gradients as the built-in it equals
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_user_divergence_on_materialised_logits(chunk_size):
    generator = torch.Generator().manual_seed(1)
    student = (3 * torch.randn(2, 7, 13, generator=generator)).requires_grad_()
    teacher = 3 * torch.randn(2, 7, 13, generator=generator)
    mask = torch.rand(2, 7, generator=generator) > 0.3
    results = []
    # the reference: the built-in on all rows at once, differentiated by autograd through the log-softmax
    for kind, chunks in (("forward_kl", None), ("forward_kl", chunk_size), ("test_user_forward_kl", chunk_size)):
        loss = kd_loss(student, teacher, 2.0, kind=kind, mask=mask, reduction="sum", chunk_size=chunks)
        results.append((loss, torch.autograd.grad(loss, student)[0]))
    for loss, grad in results[1:]:
        torch.testing.assert_close(loss, results[0][0])
        torch.testing.assert_close(grad, results[0][1], rtol=1e-5, atol=1e-6)


def test_user_divergence_on_the_fused_head_online_and_cached():
    hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, labels, kd_mask = random_problem()
    teacher = torch.randn(hidden.shape[0], weight.shape[0]).log_softmax(-1)
    logprobs, ids = teacher.topk(5, dim=-1)
    cached = CachedTargets(ids, logprobs, torch.log1p(-logprobs.exp().sum(-1)), labels.ne(-100))
    for targets in ({"teacher_hidden": teacher_hidden, "teacher_head": LMHead(teacher_weight, teacher_bias),
                     "kd_mask": kd_mask}, {"cached": cached}):
        results = []
        for kind in ("forward_kl", "test_user_forward_kl"):
            loss, kd, ce = fused_distillation_losses(hidden, LMHead(weight, bias), labels, temperature=2.0, kind=kind,
                                                     kd_weight=0.6, ce_weight=0.4, chunk_size=5, **targets)
            results.append((kd, torch.autograd.grad(loss, (hidden, weight, bias))))
        if "teacher_hidden" in targets:  # and both equal the materialised logits' loss, by autograd
            logits = F.linear(hidden, weight, bias)
            reference_kd = kd_loss(logits, F.linear(teacher_hidden, teacher_weight, teacher_bias), 2.0,
                                   mask=kd_mask, reduction="sum")
            reference = 0.6 * reference_kd + 0.4 * F.cross_entropy(logits, labels, reduction="sum")
            results.append((reference_kd.detach(), torch.autograd.grad(reference, (hidden, weight, bias))))
        for kd, gradients in results[1:]:
            torch.testing.assert_close(kd, results[0][0])
            for user, builtin in zip(gradients, results[0][1]):
                torch.testing.assert_close(user, builtin, rtol=1e-5, atol=1e-6)


def test_user_divergence_on_cached_targets_materialised():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(9, 20, generator=generator).requires_grad_()
    teacher = torch.randn(9, 20, generator=generator).log_softmax(-1)
    logprobs, ids = teacher.topk(4, dim=-1)
    tail = teacher.scatter(1, ids, float("-inf")).logsumexp(-1)
    results = []
    for kind in ("forward_kl", "test_user_forward_kl"):
        kd, _ = cached_distillation_losses(logits, ids, logprobs, tail, 2.0, kind=kind, reduction="sum")
        results.append((kd, torch.autograd.grad(kd, logits)[0]))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


# ----------------------------------------------------------------------------------------------
# through DistillationConfig and DistillationTrainer
# ----------------------------------------------------------------------------------------------
def test_config_checks_the_name_and_parameters_against_the_registry(tmp_path):
    assert config(tmp_path, kd_loss="test_alpha", kd_loss_params='{"alpha": 0.3}').divergence_params() == {"alpha": 0.3}
    assert config(tmp_path, kd_loss="jsd", jsd_beta=0.2).divergence_params() == {"beta": 0.2}
    assert config(tmp_path, kd_loss="test_alpha").divergence.description == "Amari alpha-divergence"
    with pytest.raises(ValueError, match=r"kd_loss must be one of .*'test_alpha'.*register_divergence"):
        config(tmp_path, kd_loss="tv")
    with pytest.raises(ValueError, match="takes no parameter 'gamma'"):
        config(tmp_path, kd_loss="test_alpha", kd_loss_params={"gamma": 1.0})
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        config(tmp_path, kd_loss="test_alpha", kd_loss_params={"alpha": 2.0})
    with pytest.raises(ValueError, match="JSON object"):
        config(tmp_path, kd_loss="test_alpha", kd_loss_params="alpha=0.3")
    with pytest.raises(ValueError, match="jsd_beta"):
        config(tmp_path, kd_loss="jsd", kd_loss_params={"beta": 0.3})
    assert not (tmp_path / "out").exists()


def _steps(tmp_path, fused, teacher, steps=1, student_seed=None, **overrides):
    teacher_model, student = build("llama")
    if student_seed is not None:  # a student far from its teacher, not one made from it
        torch.manual_seed(student_seed)
        student = LlamaForCausalLM(tiny_llama_config(num_hidden_layers=2))
    dataset = causal_dataset(n=8).select(range(4))
    if not teacher:
        folder = tmp_path / f"cache-{fused}"
        if not folder.exists():
            cache_teacher_logits(teacher_model, dataset, folder, top_k=8, logprob_dtype="float32")
        dataset, teacher_model = load_teacher_logits(folder, dataset), None
    trainer = DistillationTrainer(model=student, teacher_model=teacher_model, train_dataset=dataset,
                                  args=config(tmp_path, fused_lm_head_loss=fused, max_steps=steps, **overrides))
    before = {name: value.detach().clone() for name, value in student.named_parameters()}
    trainer.train()
    moved = any(not torch.equal(before[name], value) for name, value in student.named_parameters())
    return [entry for entry in trainer.state.log_history if "loss_kd" in entry], moved, student


@pytest.mark.parametrize("fused, teacher", [(None, True), (False, True), (None, False), (False, False)])
def test_user_divergence_trains_like_the_builtin_it_equals(tmp_path, fused, teacher):
    builtin, _, builtin_student = _steps(tmp_path, fused, teacher, kd_loss="forward_kl", temperature=2.0)
    user, _, user_student = _steps(tmp_path, fused, teacher, kd_loss="test_user_forward_kl", temperature=2.0)
    assert user[0]["loss_kd"] == pytest.approx(builtin[0]["loss_kd"], rel=1e-5)
    for (name, value), other in zip(user_student.named_parameters(), builtin_student.parameters()):
        torch.testing.assert_close(value, other, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("fused, teacher, kind, params", [
    (None, True, "test_total_variation", None),
    (None, False, "test_alpha", {"alpha": 0.3}),
    (False, True, "test_alpha", {"alpha": 0.7}),
])
def test_a_new_divergence_trains(tmp_path, fused, teacher, kind, params):
    logs, moved, _ = _steps(tmp_path, fused, teacher, steps=6, student_seed=1, kd_loss=kind, kd_loss_params=params,
                            alpha_ce=0.0, alpha_kd=1.0, learning_rate=1e-2)
    assert moved and all(0 < entry["loss_kd"] < float("inf") for entry in logs)
    assert logs[-1]["loss_kd"] < logs[0]["loss_kd"]  # the same 4 rows every step: it fits them


def test_recorded_settings_carry_a_custom_divergence_and_its_parameters(tmp_path):
    _, _, student = _steps(tmp_path, None, True, kd_loss="test_alpha", kd_loss_params={"alpha": 0.3})
    record = student.config.distillation
    assert record["kd_loss"] == "test_alpha" and record["kd_loss_params"] == {"alpha": 0.3}
    json.dumps(record)  # config.json can hold it
