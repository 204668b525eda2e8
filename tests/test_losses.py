import pytest
import torch
import torch.nn.functional as F

from hf_bigsmall.losses import attention_loss, hidden_state_loss, kd_loss


def _logits(*shape, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(*shape, generator=generator)).to(dtype)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_forward_kl_matches_distilbert_reference(temperature):
    student, teacher = _logits(8, 5, seed=1), _logits(8, 5, seed=2)
    reference = torch.nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(student / temperature, dim=-1), F.softmax(teacher / temperature, dim=-1)
    ) * temperature**2
    torch.testing.assert_close(kd_loss(student, teacher, temperature), reference)


def _probs64(logits, temperature):
    return F.softmax(logits.double() / temperature, dim=-1)


def _kl64(p, q):
    return (p * (p.log() - q.log())).sum(-1)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_and_reverse_kl_match_float64_reference(beta):
    student, teacher = _logits(6, 7, seed=3), _logits(6, 7, seed=4)
    p_s, p_t = _probs64(student, 2.0), _probs64(teacher, 2.0)
    mixture = beta * p_t + (1 - beta) * p_s
    jsd = (beta * _kl64(p_t, mixture) + (1 - beta) * _kl64(p_s, mixture)).mean() * 4
    torch.testing.assert_close(kd_loss(student, teacher, 2.0, kind="jsd", jsd_beta=beta).double(), jsd)
    reverse = _kl64(p_s, p_t).mean() * 4
    torch.testing.assert_close(kd_loss(student, teacher, 2.0, kind="reverse_kl").double(), reverse)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_jsd_is_finite_with_finite_gradient_at_the_ends(beta):
    student = _logits(4, 9, seed=5).requires_grad_()
    loss = kd_loss(student, _logits(4, 9, seed=6), 1.0, kind="jsd", jsd_beta=beta)
    loss.backward()
    # the mixture equals one distribution: the divergence is exactly zero, never nan
    assert torch.isfinite(loss) and loss.abs() < 1e-6
    assert torch.isfinite(student.grad).all()


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_identical_logits_give_zero(kind):
    logits = _logits(3, 4, 11, seed=7)
    assert kd_loss(logits, logits.clone(), 2.0, kind=kind).abs() < 1e-6


def test_masked_positions_are_ignored():
    student, teacher = _logits(2, 6, 10, seed=8), _logits(2, 6, 10, seed=9)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1, :2] = False
    changed = student.clone()
    changed[~mask] = 1e4 * torch.randn_like(changed[~mask])  # garbage where the mask is off
    torch.testing.assert_close(kd_loss(changed, teacher, 2.0, mask=mask), kd_loss(student, teacher, 2.0, mask=mask))
    # batchmean over the selected tokens equals the reference on those rows alone
    reference = kd_loss(student[mask], teacher[mask], 2.0)
    torch.testing.assert_close(kd_loss(student, teacher, 2.0, mask=mask), reference)
    assert kd_loss(student, teacher, 2.0, mask=mask, reduction="none").shape == (int(mask.sum()),)
    torch.testing.assert_close(
        kd_loss(student, teacher, 2.0, mask=mask, reduction="sum"), reference * mask.sum()
    )


def test_all_masked_is_zero_not_nan():
    student, teacher = _logits(2, 3, 5), _logits(2, 3, 5, seed=1)
    loss = kd_loss(student, teacher, mask=torch.zeros(2, 3, dtype=torch.bool))
    assert loss == 0


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_bf16_logits_are_upcast_and_gradients_finite(kind):
    student = _logits(4, 8, 32, seed=10, dtype=torch.bfloat16).requires_grad_()
    teacher = _logits(4, 8, 32, seed=11, dtype=torch.bfloat16)
    loss = kd_loss(student, teacher, 2.0, kind=kind)
    assert loss.dtype == torch.float32
    loss.backward()
    assert student.grad.dtype == torch.bfloat16 and torch.isfinite(student.grad.float()).all()
    torch.testing.assert_close(loss, kd_loss(student.float(), teacher.float(), 2.0, kind=kind))


def test_minus_inf_logits_do_not_give_nan():
    student, teacher = _logits(2, 6, seed=12).requires_grad_(), _logits(2, 6, seed=13)
    teacher = teacher.clone()
    teacher[:, 0] = float("-inf")  # e.g. a vocabulary entry the teacher masks out
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        for chunk_size in (None, 1):
            student.grad = None
            loss = kd_loss(student, teacher, 1.0, kind=kind, chunk_size=chunk_size)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"temperature": 0.0}, "temperature"), ({"kind": "kl"}, "kind"), ({"kind": "jsd", "jsd_beta": 1.5}, "jsd_beta"),
     ({"chunk_size": 0}, "chunk_size")],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kd_loss(_logits(2, 3), _logits(2, 3, seed=1), **kwargs)


def test_vocab_mismatch_raises():
    with pytest.raises(ValueError, match="vocabulary"):
        kd_loss(_logits(2, 3), _logits(2, 4))


def test_hidden_state_loss_mse_and_cosine():
    student, teacher = _logits(2, 5, 8, seed=14), _logits(2, 5, 8, seed=15)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(
        hidden_state_loss(student, teacher, "mse", mask=mask),
        F.mse_loss(student[mask], teacher[mask]),
    )
    cosine = 1 - F.cosine_similarity(student[mask], teacher[mask], dim=-1).mean()
    torch.testing.assert_close(hidden_state_loss(student, teacher, "cosine", mask=mask), cosine)
    assert hidden_state_loss(teacher, teacher.clone(), "cosine").abs() < 1e-6
    with pytest.raises(ValueError, match="project"):
        hidden_state_loss(_logits(2, 5, 4), teacher)


def test_attention_loss_is_kl_of_attention_rows():
    student = F.softmax(_logits(2, 4, 6, 6, seed=16), -1)
    teacher = F.softmax(_logits(2, 4, 6, 6, seed=17), -1)
    reference = (teacher * (teacher.log() - student.log())).sum(-1).mean()
    torch.testing.assert_close(attention_loss(student, teacher), reference)
    assert attention_loss(teacher, teacher.clone()).abs() < 1e-6
    # different head counts compare head-mean maps
    assert torch.isfinite(attention_loss(student[:, :2], teacher))


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_loss_equals_the_whole(kind, dtype):
    student = _logits(3, 17, 50, dtype=dtype).requires_grad_()
    teacher = _logits(3, 17, 50, seed=1, dtype=dtype)
    mask = torch.rand(3, 17, generator=torch.Generator().manual_seed(2)) > 0.3
    whole = kd_loss(student, teacher, 2.0, kind=kind, mask=mask, reduction="sum")
    (whole_grad,) = torch.autograd.grad(whole, student)
    for chunk_size in (1, 4, 1000):
        chunked = kd_loss(student, teacher, 2.0, kind=kind, mask=mask, reduction="sum", chunk_size=chunk_size)
        (chunked_grad,) = torch.autograd.grad(chunked, student)
        torch.testing.assert_close(chunked, whole)
        torch.testing.assert_close(chunked_grad, whole_grad)
    per_row = kd_loss(student.detach(), teacher, 2.0, kind=kind, mask=mask, reduction="none", chunk_size=4)
    assert per_row.shape == (int(mask.sum()),)
    torch.testing.assert_close(per_row.sum(), whole.detach())
