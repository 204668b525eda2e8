"""`prune_one_shot`: Wanda and magnitude masks, N:M patterns, saving, re-arming and healing."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import GPT2LMHeadModel, LlamaForCausalLM, Trainer
from transformers.pytorch_utils import Conv1D

from hf_bigsmall import (
    DistillationConfig,
    DistillationTrainer,
    MagnitudePruningCallback,
    prune_one_shot,
    save_pruned_model,
    sparsity_report,
)
from hf_bigsmall.pruning.calibration import CalibrationData
from hf_bigsmall.pruning.io import SPARSITY_MASKS_NAME, load_masks
from tests.testing_utils import TINY_VOCAB, tiny_gpt2_config, tiny_llama_config

# ------------------------------------------------------------------------- a Linear with known activations
# Token j enters the layer as CHANNEL_SCALE[j] * e_j, so over the sequence [0, 1, 2, 3] the input
# norms are ||X_j||_2 = CHANNEL_SCALE[j].
CHANNEL_SCALE = [10.0, 0.1, 1.0, 2.0]
WEIGHT = [[0.3, 5.0, 1.0, 1.5],
          [-1.0, 20.0, 3.0, -0.1],
          [0.05, -1.0, -4.0, 2.0]]
# |W| * ||X||:  [3, 0.5, 1, 3]  ->  prune inputs 1, 2
#               [10, 2, 3, 0.2] ->  prune inputs 3, 1
#               [0.5, 0.1, 4, 4] -> prune inputs 1, 0
WANDA_50 = [[False, True, True, False],
            [False, True, False, True],
            [True, True, False, False]]
# |W| alone, per row: [0.3, 1], [0.1, 1], [0.05, 1]
MAGNITUDE_50_ROWS = [[True, False, True, False],
                     [True, False, False, True],
                     [True, True, False, False]]


class KnownActivations(nn.Module):
    """An embedding that turns token j into `CHANNEL_SCALE[j] * e_j`, then one Linear (or Conv1D) layer."""

    def __init__(self, conv1d: bool = False):
        super().__init__()
        self.embed = nn.Embedding(4, 4)
        self.embed.weight.data = torch.diag(torch.tensor(CHANNEL_SCALE))
        weight = torch.tensor(WEIGHT)
        if conv1d:
            layer = Conv1D(3, 4)
            layer.weight.data = weight.t().clone()  # Conv1D keeps (in, out)
        else:
            layer = nn.Linear(4, 3, bias=False)
            layer.weight.data = weight.clone()
        self.layers = nn.ModuleList([layer])

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, attention_mask=None):
        return self.layers[0](self.embed(input_ids))


KNOWN_CALIBRATION = CalibrationData(torch.tensor([[0, 1, 2, 3]]))


@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
@pytest.mark.parametrize("method, expected", [("wanda", WANDA_50), ("magnitude", MAGNITUDE_50_ROWS)])
def test_masks_equal_the_reference_computed_by_hand(conv1d, method, expected):
    model = KnownActivations(conv1d)
    prune_one_shot(model, KNOWN_CALIBRATION, sparsity=0.5, method=method, scope="row")
    mask = model.pruning_state.masks["layers.0.weight"]
    expected = torch.tensor(expected)
    assert torch.equal(mask, expected.t() if conv1d else expected)
    weight = model.layers[0].weight.t() if conv1d else model.layers[0].weight
    assert torch.equal(weight == 0, expected)
    assert torch.equal(weight[~expected], torch.tensor(WEIGHT)[~expected])


def test_magnitude_defaults_to_one_threshold_per_layer():
    model = KnownActivations()
    prune_one_shot(model, sparsity=0.5, method="magnitude")
    flat = torch.tensor(WEIGHT).abs().flatten()
    expected = torch.zeros(12, dtype=torch.bool)
    expected[flat.argsort()[:6]] = True
    assert torch.equal(model.pruning_state.masks["layers.0.weight"].flatten(), expected)
    assert model.layers[0].weight.detach().flatten()[expected].eq(0).all()


# ------------------------------------------------------------------------- tiny LLMs
def calibration_rows(num_rows: int = 16, length: int = 64, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    return Dataset.from_dict({"input_ids": torch.randint(1, TINY_VOCAB, (num_rows, length), generator=generator)})


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config()).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(tiny_gpt2_config()).eval()


def rows_of(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """A weight as (out, in) whatever the layer stores."""
    return weight.t() if isinstance(module, Conv1D) else weight


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("method", ["wanda", "magnitude"])
@pytest.mark.parametrize("pattern", ["2:4", "1:4", "3:8"])
def test_every_block_of_m_inputs_has_exactly_n_zeros(build, method, pattern):
    model = build()
    n, m = map(int, pattern.split(":"))
    prune_one_shot(model, calibration_rows(), sparsity=None, method=method, pattern=pattern, num_samples=8, seq_len=32)
    modules = dict(model.named_modules())
    assert len(model.pruning_state.masks) >= 16
    for name, mask in model.pruning_state.masks.items():
        module = modules[name.removesuffix(".weight")]
        zeros = rows_of(module, module.weight == 0)
        blocks = zeros.reshape(zeros.shape[0], -1, m).sum(-1)
        assert (blocks == n).all(), name
        assert torch.equal(rows_of(module, mask), zeros)
    assert sparsity_report(model).global_sparsity == pytest.approx(n / m)


def test_wanda_prunes_the_same_fraction_of_every_output_row():
    model = tiny_gpt2()
    prune_one_shot(model, calibration_rows(), sparsity=0.5, num_samples=8, seq_len=32)
    modules = dict(model.named_modules())
    for name in model.pruning_state.masks:
        module = modules[name.removesuffix(".weight")]
        zeros = rows_of(module, module.weight == 0)
        assert (zeros.sum(dim=1) == zeros.shape[1] // 2).all(), name


def test_wanda_and_magnitude_differ_where_activations_are_uneven():
    # Scale a few input channels of every block up: Wanda keeps their small weights, magnitude does not.
    wanda, magnitude = tiny_llama(), tiny_llama()
    for model in (wanda, magnitude):
        for layer in model.model.layers:
            layer.input_layernorm.weight.data[:4] = 50.0
    prune_one_shot(wanda, calibration_rows(), method="wanda", num_samples=8, seq_len=32)
    prune_one_shot(magnitude, method="magnitude", scope="row")
    name = "model.layers.0.self_attn.q_proj.weight"
    kept_on_loud_channels = lambda model: int((~model.pruning_state.masks[name][:, :4]).sum())
    assert kept_on_loud_channels(wanda) > kept_on_loud_channels(magnitude) + 16


def test_masks_only_grow_when_pruning_again():
    model = tiny_llama()
    prune_one_shot(model, sparsity=0.3, method="magnitude")
    first = {name: mask.clone() for name, mask in model.pruning_state.masks.items()}
    prune_one_shot(model, calibration_rows(), sparsity=0.5, method="wanda", num_samples=8, seq_len=32)
    for name, mask in first.items():
        assert model.pruning_state.masks[name][mask].all(), name
    assert sparsity_report(model).global_sparsity == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"sparsity": 1.0}, ValueError, r"outside \[0, 1\)"),
        ({"sparsity": -0.1}, ValueError, r"outside \[0, 1\)"),
        ({"sparsity": "half"}, TypeError, "float"),
        ({"method": "obs"}, ValueError, "choose one of"),
        ({"scope": "block"}, ValueError, "choose one of"),
        ({"pattern": "4:4"}, ValueError, "0 < N < M"),
        ({"pattern": "0:4"}, ValueError, "0 < N < M"),
        ({"pattern": "2-4"}, ValueError, "form 'N:M'"),
        ({"pattern": "2:3", "sparsity": None}, ValueError, "not a multiple of M=3"),
        ({"pattern": "2:4", "sparsity": 0.3}, ValueError, "sparsity=0.5"),
        ({"target_modules": ["no_such_layer"]}, ValueError, "pass target_modules="),
        ({"calibration_dataset": None}, ValueError, "needs calibration_dataset"),
        ({"calibration_dataset": []}, ValueError, "empty"),
        ({"calibration_dataset": [{"input_ids": [1, 2, 3, TINY_VOCAB]}]}, ValueError, "another tokenizer"),
        ({"calibration_dataset": [{"input_ids": []}]}, ValueError, "no tokens"),
    ],
    ids=["sparsity-1", "sparsity-negative", "sparsity-str", "method", "scope", "n-equals-m", "n-zero", "not-n-m",
         "m-does-not-divide", "sparsity-vs-pattern", "no-targets", "no-calibration", "empty-calibration",
         "foreign-ids", "no-tokens"],
)
def test_bad_input_is_refused_before_the_model_changes(kwargs, error, words):
    model = tiny_llama()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    kwargs = {"calibration_dataset": calibration_rows(), "num_samples": 4, "seq_len": 32, **kwargs}
    with pytest.raises(error, match=words):
        prune_one_shot(model, **kwargs)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert not getattr(model, "pruning_state", None)


# ------------------------------------------------------------------------- save, reload, re-arm, heal
def causal_blocks(num_rows: int = 16, length: int = 16, seed: int = 1) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, TINY_VOCAB, (num_rows, length), generator=generator)
    return Dataset.from_dict({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                              "labels": input_ids.clone()})


def assert_masks_hold(model, masks):
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert params[name].detach()[mask.to(params[name].device)].eq(0).all(), name


def test_saved_model_reloads_with_plain_from_pretrained_and_rearms(tmp_path):
    model = tiny_llama()
    prune_one_shot(model, calibration_rows(), sparsity=None, pattern="2:4", num_samples=8, seq_len=32)
    masks = {name: mask.clone() for name, mask in model.pruning_state.masks.items()}
    save_pruned_model(model, tmp_path / "pruned")
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config["sparsity"]["method"] == "wanda" and config["sparsity"]["structure"] == "2:4"
    assert config["sparsity"]["calibration"] == {"num_samples": 8, "seq_len": 32, "num_tokens": 256}
    assert config["sparsity"]["global_sparsity"] == pytest.approx(0.5)
    saved = load_masks(tmp_path / "pruned")
    assert set(saved) == set(masks) and all(torch.equal(saved[n], masks[n]) for n in masks)

    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "pruned")
    ids = torch.randint(1, TINY_VOCAB, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)
    assert_masks_hold(reloaded, masks)

    before = {n: p.detach().clone() for n, p in reloaded.named_parameters()}
    args = DistillationConfig(output_dir=str(tmp_path / "heal"), max_steps=4, per_device_train_batch_size=4,
                              learning_rate=1e-2, report_to="none", save_strategy="no", use_cpu=True,
                              alpha_kd=0.0, alpha_ce=1.0, disable_tqdm=True)
    trainer = Trainer(model=reloaded, args=args, train_dataset=causal_blocks(),
                      callbacks=[MagnitudePruningCallback(target_sparsity=None)])
    trainer.train()
    assert_masks_hold(reloaded, masks)
    changed = [n for n in masks if not torch.equal(before[n], reloaded.get_parameter(n).detach())]
    assert changed, "the healing run did not train the pruned layers"
    trainer.save_model()  # a plain Trainer's callback writes the pruning record into output_dir
    healed = json.loads((tmp_path / "heal" / "config.json").read_text())["sparsity"]
    assert healed["method"] == "wanda" and healed["structure"] == "2:4"  # how it was pruned is kept
    assert (tmp_path / "heal" / SPARSITY_MASKS_NAME).is_file()


def test_masks_survive_a_healing_distillation_with_gradient_accumulation(tmp_path):
    teacher = tiny_llama()
    student = copy.deepcopy(teacher)
    prune_one_shot(student, calibration_rows(), sparsity=0.5, num_samples=8, seq_len=32)
    masks = {name: mask.clone() for name, mask in student.pruning_state.masks.items()}
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    teacher_before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    args = DistillationConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2,
                              gradient_accumulation_steps=2, learning_rate=1e-2, report_to="none",
                              save_strategy="no", use_cpu=True, alpha_kd=0.5, alpha_ce=0.5, disable_tqdm=True)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=causal_blocks(),
                                  callbacks=[MagnitudePruningCallback(target_sparsity=None)])
    trainer.train()
    assert_masks_hold(student, masks)
    assert sparsity_report(student).global_sparsity == pytest.approx(0.5)
    assert all(not torch.equal(before[n], student.get_parameter(n).detach()) for n in masks)
    assert all(torch.equal(p, teacher.get_parameter(n)) for n, p in teacher_before.items())  # the teacher is untouched


# ------------------------------------------------------------------------- Wanda and N:M in the callback
def pruning_run(tmp_path, callback, model=None, max_steps=8):
    model = model or tiny_llama()
    args = DistillationConfig(output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=4,
                              learning_rate=1e-2, report_to="none", save_strategy="no", use_cpu=True,
                              logging_steps=1, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=causal_blocks(), callbacks=[callback])
    trainer.train()
    return trainer


def test_callback_wanda_one_shot_equals_prune_one_shot(tmp_path):
    reference = prune_one_shot(tiny_llama(), calibration_rows(), sparsity=0.5, num_samples=8, seq_len=32)
    callback = MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot", criterion="wanda",
                                        calibration_dataset=calibration_rows(), calibration_samples=8,
                                        calibration_seq_len=32)
    trainer = pruning_run(tmp_path, callback, max_steps=2)
    assert callback.config.scope == "row"
    for name, mask in reference.pruning_state.masks.items():
        assert torch.equal(callback.masks[name], mask), name
    assert trainer.model.pruning_state.record["method"] == "wanda"


def test_callback_gradual_wanda_ends_with_every_row_at_the_target(tmp_path):
    callback = MagnitudePruningCallback(target_sparsity=0.5, schedule="cubic", end_step=6, pruning_frequency=2,
                                        criterion="wanda", calibration_dataset=calibration_rows(),
                                        calibration_samples=4, calibration_seq_len=32)
    trainer = pruning_run(tmp_path, callback)
    scheduled = [entry["sparsity/global"] for entry in trainer.state.log_history if "sparsity/global" in entry]
    assert any(0 < value < 0.5 for value in scheduled) and scheduled[-1] == pytest.approx(0.5)
    for name, module in find_targets(trainer.model).items():
        zeros = module.weight == 0
        assert (zeros.sum(dim=1) == zeros.shape[1] // 2).all(), name


@pytest.mark.parametrize("criterion", ["magnitude", "wanda"])
def test_callback_n_m_structure_ramps_to_exactly_n_of_every_m(tmp_path, criterion):
    callback = MagnitudePruningCallback(target_sparsity=0.5, structure="2:4", schedule="linear", end_step=6,
                                        pruning_frequency=2, criterion=criterion,
                                        calibration_dataset=calibration_rows() if criterion == "wanda" else None,
                                        calibration_samples=4, calibration_seq_len=32)
    trainer = pruning_run(tmp_path, callback)
    logged = {round(entry["sparsity/global"], 4) for entry in trainer.state.log_history if "sparsity/global" in entry}
    assert 0.25 in logged and 0.5 in logged  # 1 of 4 on the way, then 2 of 4
    for name, module in find_targets(trainer.model).items():
        blocks = (module.weight == 0).reshape(module.weight.shape[0], -1, 4).sum(-1)
        assert (blocks == 2).all(), name


def find_targets(model):
    from hf_bigsmall.pruning.targets import find_target_modules

    return find_target_modules(model)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"criterion": "wanda"}, "needs calibration_dataset"),
        ({"criterion": "wanda", "structure": "neurons", "calibration_dataset": [1]}, "scores single weights"),
        ({"criterion": "sparsegpt"}, "choose one of"),
        ({"structure": "2:4", "target_sparsity": 0.3}, "target_sparsity=0.5"),
        ({"structure": "4:4"}, "0 < N < M"),
        ({"structure": "neurons", "scope": "row"}, "structure='unstructured'"),
    ],
)
def test_callback_bad_criterion_or_pattern_is_refused_at_construction(kwargs, words):
    with pytest.raises(ValueError, match=words):
        MagnitudePruningCallback(**kwargs)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"structure": "2:3", "target_sparsity": 2 / 3}, "not a multiple of M=3"),
        ({"criterion": "wanda", "calibration_dataset": [{"input_ids": [1, TINY_VOCAB + 1]}]}, "another tokenizer"),
        ({"criterion": "wanda", "calibration_dataset": []}, "empty"),
    ],
)
def test_callback_bad_model_or_calibration_fails_when_the_trainer_is_built(tmp_path, kwargs, words):
    model = tiny_llama()
    args = DistillationConfig(output_dir=str(tmp_path), max_steps=2, report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match=words):
        Trainer(model=model, args=args, train_dataset=causal_blocks(), callbacks=[MagnitudePruningCallback(**kwargs)])


@pytest.mark.parametrize("method, sequential", [("sparsegpt", False), ("sparsegpt", "layer"), ("wanda", False),
                                                ("wanda", "block")])
def test_a_targeted_layer_no_calibration_token_reaches_is_refused_before_pruning(method, sequential):
    # GPT-2 with cross-attention run without encoder states never calls its crossattention layers
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_gpt2_config(add_cross_attention=True)).eval()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"No calibration token reaches 12 targeted layer\(s\): "
                                         r"transformer\.h\.0\.crossattention\..*leave them out of target_modules="):
        prune_one_shot(model, calibration_rows(), method=method, sequential=sequential, num_samples=4, seq_len=32)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert not getattr(model, "pruning_state", None)
    # left out of the targets, the rest prunes as usual
    prune_one_shot(model, calibration_rows(), method=method, sequential=sequential, num_samples=4, seq_len=32,
                   target_modules=r".*\.(attn|mlp)\.c_(attn|proj|fc)")
    assert sparsity_report(model).global_sparsity == pytest.approx(0.5)


def test_the_benchmark_reads_its_variants_strictly_and_stores_the_recorded_mode():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_one_shot.py"
    spec = importlib.util.spec_from_file_location("bench_one_shot", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.parse_variant("sparsegpt+seq+layer+damp0.1+bs64:2:4") == (
        "sparsegpt", "layer", "2:4", {"dampening": 0.1, "block_size": 64})
    for variant, words in [("sparsegpt+damp", "needs a number"), ("sparsegpt+bs", "needs a number"),
                           ("sparsegpt+bsx", "needs a number"), ("sparsegpt+block+seq", "contradicts"),
                           ("sparsegpt+layer+block", "contradicts")]:
        with pytest.raises(SystemExit, match=words):
            bench.parse_variant(variant)
    model = prune_one_shot(tiny_llama(), calibration_rows(), method="wanda", sequential=True, num_samples=4,
                           seq_len=32)
    assert bench.recorded_sequential(model) == {"sequential": "layer"}
    assert bench.recorded_sequential(prune_one_shot(tiny_llama(), method="magnitude")) == {"sequential": False}
