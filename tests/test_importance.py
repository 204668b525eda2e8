"""Activation importance, Block Influence, importance-based depth/width pruning and its compaction."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2LMHeadModel, LlamaForCausalLM

from hf_bigsmall import compact, make_student
from hf_bigsmall.pruning.importance import IMPORTANCE_NAME, Importance, compute_importance
from hf_bigsmall.pruning.io import apply_masks
from hf_bigsmall.pruning.targets import unit_groups
from hf_bigsmall.pruning.width import importance_masks, prune_width
from tests.testing_utils import TINY_VOCAB, tiny_gpt2_config, tiny_llama_config

MODELS = {
    "llama": lambda: LlamaForCausalLM(tiny_llama_config()),
    "gpt2": lambda: GPT2LMHeadModel(tiny_gpt2_config()),
}


def _model(arch: str):
    torch.manual_seed(0)
    return MODELS[arch]().eval()


def _calibration(num_samples: int = 12, seq_len: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, TINY_VOCAB, (num_samples, seq_len), generator=torch.Generator().manual_seed(seed))


def _logits(model, seed: int = 3):
    with torch.no_grad():
        return model(input_ids=_calibration(3, 12, seed)).logits


def _layers(model):
    return model.model.layers if hasattr(model, "model") else model.transformer.h


@pytest.mark.parametrize("arch", MODELS)
def test_importance_shapes_and_save(arch, tmp_path):
    model = _model(arch)
    importance = compute_importance(model, _calibration(), seq_len=10)
    heads = 4
    assert importance.neurons.shape == (4, 64 if arch == "llama" else 128)
    assert importance.heads.shape == (4, heads) and importance.channels.shape == (32,)
    assert importance.blocks.shape == (4,) and (importance.blocks > 0).all()
    assert (importance.kv_groups is None) == (arch == "gpt2")
    assert importance.num_samples == 12 and importance.num_tokens == 120
    importance.save(tmp_path)
    again = Importance.load(tmp_path)
    torch.testing.assert_close(again.neurons, importance.neurons, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again.blocks, importance.blocks, rtol=1e-5, atol=1e-6)
    assert (tmp_path / IMPORTANCE_NAME).stat().st_size < 50_000
    assert (tmp_path / "importance.png").stat().st_size > 1000


def test_padding_tokens_do_not_count():
    model = _model("llama")
    ids = _calibration(4, 10)
    rows = [{"input_ids": ids[i].tolist(), "attention_mask": [1] * 10} for i in range(4)]
    padded = [{"input_ids": r["input_ids"] + [5, 7], "attention_mask": r["attention_mask"] + [0, 0]} for r in rows]
    plain, with_padding = compute_importance(model, rows, seq_len=10), compute_importance(model, padded, seq_len=10)
    assert with_padding.num_tokens == plain.num_tokens == 40
    torch.testing.assert_close(with_padding.neurons, plain.neurons)
    torch.testing.assert_close(with_padding.blocks, plain.blocks)


@torch.no_grad()
@pytest.mark.parametrize("arch", MODELS)
def test_unit_with_zeroed_weights_has_zero_importance(arch):
    model = _model(arch)
    layer = _layers(model)[1]
    neuron, head, channel = 5, 2, 7
    if arch == "llama":
        layer.mlp.gate_proj.weight[neuron] = 0  # silu(0) * up = 0
        layer.self_attn.v_proj.weight[8:16] = 0  # key/value group 1 (heads 2 and 3) reads zero values
    else:
        layer.mlp.c_fc.weight[:, neuron] = 0
        layer.mlp.c_fc.bias[neuron] = 0  # gelu(0) = 0
        layer.attn.c_attn.weight[:, 64 + 16 : 64 + 24] = 0  # value slice of head 2
        layer.attn.c_attn.bias[64 + 16 : 64 + 24] = 0
    for module in model.modules():
        if type(module).__name__.endswith(("RMSNorm", "LayerNorm")):
            module.weight[channel] = 0
            if getattr(module, "bias", None) is not None:
                module.bias[channel] = 0
    importance = compute_importance(model, _calibration())
    assert importance.neurons[1, neuron] == 0 and (importance.neurons[1] > 0).sum() == importance.neurons.shape[1] - 1
    assert importance.heads[1, head] == 0 and importance.heads[0, head] > 0
    if arch == "llama":
        assert importance.kv_groups[1, 1] == 0 and importance.heads[1, 3] == 0 and importance.kv_groups[1, 0] > 0
    assert importance.channels[channel] == 0 and (importance.channels > 0).sum() == 31


@torch.no_grad()
def _make_identity(model, arch: str, index: int) -> None:
    """Block `index` returns its input: both residual branches write zeros."""
    layer = _layers(model)[index]
    outputs = [layer.self_attn.o_proj, layer.mlp.down_proj] if arch == "llama" else [layer.attn.c_proj, layer.mlp.c_proj]
    for module in outputs:
        module.weight.zero_()
        if module.bias is not None:
            module.bias.zero_()


@pytest.mark.parametrize("arch", MODELS)
def test_block_influence_picks_identity_block_first(arch):
    teacher = _model(arch)
    _make_identity(teacher, arch, 2)
    importance = compute_importance(teacher, _calibration())
    assert int(importance.blocks.argmin()) == 2 and importance.blocks[2] < 1e-6 < importance.blocks.min(dim=0).values + 1
    student = make_student(teacher, num_layers=3, teacher_layers="importance", calibration_dataset=_calibration())
    assert student.config.distillation["teacher_layers"] == [0, 1, 3]
    assert student.config.distillation["layer_selection"] == "block influence (ShortGPT)"
    # removing a block that returns its input leaves the model's function unchanged
    torch.testing.assert_close(_logits(student.eval()), _logits(teacher), rtol=1e-4, atol=1e-5)
    # the default stays evenly spaced
    assert make_student(teacher, num_layers=3).config.distillation["teacher_layers"] == [0, 2, 3]


def test_make_student_importance_needs_calibration():
    with pytest.raises(ValueError, match="calibration_dataset="):
        make_student(_model("llama"), num_layers=2, teacher_layers="importance")


@pytest.mark.parametrize("arch, structure", [("llama", "neurons"), ("llama", "heads"), ("gpt2", "neurons")])
def test_compacted_gives_the_masked_outputs(arch, structure):
    model = _model(arch)
    importance = compute_importance(model, _calibration())
    masks = importance_masks(model, importance, structure, 0.5)
    scores = importance.neurons if structure == "neurons" else importance.heads
    # the masked units are the least important of each block (each KV group for Llama heads)
    unit_slice = unit_groups(model, structure)[1].slices[0]
    mask = masks[f"{unit_slice.module_name}.weight"].movedim(unit_slice.dim, 0)
    pruned = set(mask.reshape(scores.shape[1], -1).all(dim=1).nonzero().flatten().tolist())
    if structure == "neurons":
        assert pruned == set(scores[1].argsort()[: scores.shape[1] // 2].tolist())
    else:  # one of the two heads of each key/value group: the lower one
        assert pruned == {int(scores[1, :2].argmin()), 2 + int(scores[1, 2:].argmin())}
    apply_masks(model, masks)
    masked = _logits(model)
    before = model.num_parameters()
    compact(model)
    assert model.num_parameters() < before
    torch.testing.assert_close(_logits(model), masked, rtol=1e-4, atol=1e-5)
    # prune_width makes the same choice, without masks
    fresh = _model(arch)
    target = {"intermediate_size": scores.shape[1] // 2} if structure == "neurons" else {"num_attention_heads": 2}
    prune_width(fresh, importance, **target)
    torch.testing.assert_close(_logits(fresh), masked, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "arch, targets",
    [
        ("llama", dict(intermediate_size=40, num_attention_heads=2, num_key_value_heads=1, hidden_size=24)),
        ("llama", dict(num_key_value_heads=1)),
        ("gpt2", dict(intermediate_size=48)),
    ],
)
def test_pruned_model_reloads_with_plain_from_pretrained(arch, targets, tmp_path):
    model = _model(arch)
    importance = compute_importance(model, _calibration())
    before = model.num_parameters()
    prune_width(model, importance, **targets)
    assert model.num_parameters() < before
    assert model.config.width_pruning["params"] == [before, model.num_parameters()]
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.num_parameters() == model.num_parameters()
    torch.testing.assert_close(_logits(reloaded), _logits(model))
    if arch == "llama":
        assert reloaded.config.num_key_value_heads == targets["num_key_value_heads"]
        assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight or not reloaded.config.tie_word_embeddings


@pytest.mark.parametrize(
    "arch, targets, message",
    [
        ("llama", dict(intermediate_size=0), "every neuron"),
        ("llama", dict(num_attention_heads=1), "every query head of a group"),
        ("llama", dict(num_key_value_heads=0), "every key/value group"),
        ("llama", dict(num_attention_heads=3), "not a multiple"),
        ("llama", dict(hidden_size=0), "every hidden channel"),
        ("llama", dict(intermediate_size=100), "more than"),
        ("llama", dict(hidden_size=30), "multiple of 4"),
        ("gpt2", dict(hidden_size=16), "head size"),
        ("gpt2", dict(num_attention_heads=2), "head size"),
    ],
)
def test_bad_targets_raise_before_the_model_changes(arch, targets, message):
    model = _model(arch)
    importance = compute_importance(model, _calibration())
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        prune_width(model, importance, **targets)
    assert all(torch.equal(state[name], tensor) for name, tensor in model.state_dict().items())


def test_bad_calibration_and_config_raise():
    model = _model("llama")
    with pytest.raises(ValueError, match="another tokenizer"):
        compute_importance(model, _calibration() + TINY_VOCAB)
    from datasets import Dataset

    with pytest.raises(TypeError, match="tokenize it"):
        compute_importance(model, Dataset.from_dict({"text": ["a b c"]}))
    model.config.num_key_value_heads = None
    with pytest.raises(ValueError, match="num_key_value_heads"):
        compute_importance(model, _calibration())
    importance = compute_importance(_model("llama"), _calibration())
    with pytest.raises(ValueError, match="select_layers"):
        prune_width(make_student(_model("llama"), num_layers=2), importance, intermediate_size=32)
    student = make_student(_model("llama"), num_layers=2, teacher_layers=[1, 3])
    prune_width(student, importance.select_layers([1, 3]), intermediate_size=32)
    assert student.config.intermediate_size == 32


def test_callback_activation_criterion(tmp_path):
    from transformers import Trainer, TrainingArguments

    from hf_bigsmall import MagnitudePruningCallback

    model = _model("llama")
    importance = compute_importance(model, _calibration())
    expected = importance_masks(model, importance, "neurons", 0.25)
    with pytest.raises(ValueError, match="importance="):
        MagnitudePruningCallback(target_sparsity=0.25, structure="neurons", criterion="activation")
    callback = MagnitudePruningCallback(target_sparsity=0.25, schedule="one_shot", structure="neurons",
                                        criterion="activation", importance=importance)
    ids = _calibration(8, 10)
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, report_to="none",
                             save_strategy="no", use_cpu=True, learning_rate=0.0)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    assert callback.masks.keys() == expected.keys()
    assert all(torch.equal(callback.masks[name].cpu(), expected[name]) for name in expected)
    # or measured by the callback itself from calibration rows
    model = _model("llama")
    callback = MagnitudePruningCallback(target_sparsity=0.25, schedule="one_shot", structure="neurons",
                                        criterion="activation", calibration_dataset=_calibration(), calibration_samples=12)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    assert all(torch.equal(callback.masks[name].cpu(), expected[name]) for name in expected)
