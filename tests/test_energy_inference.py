"""measure_inference on tiny models and on the embedded MiniLM with Rotten Tomatoes."""

import json

import pytest
import torch

from hf_bigsmall import measure_inference
from tests.testing_utils import random_token_batch, requires_minilm, requires_scattertext, tiny_bert_config


@pytest.fixture(scope="module")
def tiny_bert():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config())


def test_measure_inference_on_batches(tiny_bert):
    batches = [{**random_token_batch(8, 16, seed=i), "labels": torch.zeros(8, dtype=torch.long)} for i in range(3)]
    tiny_bert.train()
    result = measure_inference(tiny_bert, batches, latency_samples=5, cpu_tdp_watts=40, cpu_threads=10)
    assert tiny_bert.training  # mode restored
    assert result.num_samples == 24 and result.batch_size == 8 and result.latency_samples == 5
    assert result.energy_source == "estimate"
    assert result.meters[0]["watts_per_thread"] == 4.0 and result.meters[0]["origin"] == "user"
    assert result.energy_joules > 0
    assert result.joules_per_sample == pytest.approx(result.energy_joules / 24)
    assert result.energy_kwh == pytest.approx(result.energy_joules / 3.6e6)
    assert result.co2_grams == pytest.approx(result.energy_kwh * result.grid_intensity_g_per_kwh)
    assert 0 < result.latency_ms_p50 <= result.latency_ms_p95
    assert result.throughput_samples_per_s == pytest.approx(24 / result.duration_s)
    # the estimate cannot exceed the wall time of the pass x watts x threads used
    assert result.energy_joules <= result.duration_s * 4.0 * torch.get_num_threads() * 1.2
    json.dumps(result.to_dict())


def test_measure_inference_hands_each_timed_forward_to_a_callback_outside_the_timer(tiny_bert):
    import time

    batches = [random_token_batch(4, 16, seed=i) for i in range(3)]
    seen = []

    def slow_scorer(index, batch, outputs):
        seen.append((index, batch["input_ids"].shape[0], tuple(outputs.logits.shape)))
        time.sleep(0.2)

    result = measure_inference(tiny_bert, batches, latency_samples=2, cpu_tdp_watts=40, cpu_threads=10,
                               on_batch_outputs=slow_scorer)
    assert seen == [(0, 4, (4, 2)), (1, 4, (4, 2)), (2, 4, (4, 2))]  # the first measured pass only, in order
    assert result.num_samples == 12 and result.energy_joules > 0
    assert result.duration_s < 0.3  # the forwards alone, not the 0.6 s the callback slept
    assert result.throughput_samples_per_s == pytest.approx(12 / result.duration_s)


def test_measure_inference_on_a_ragged_dataset_with_min_duration(tiny_bert):
    from datasets import Dataset

    rows = [{"input_ids": list(range(1, 4 + i % 5)), "label": i % 2} for i in range(10)]
    result = measure_inference(
        tiny_bert, Dataset.from_list(rows), batch_size=4, max_samples=9, latency_samples=3,
        min_duration_s=0.2, grid_intensity_g_per_kwh=100,
    )
    assert result.batch_size == 4 and result.num_samples % 9 == 0 and result.num_samples >= 9
    assert result.duration_s >= 0.2
    assert result.grid_intensity_origin == "user"


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"latency_samples": -1}, ValueError, "latency_samples"),
        ({"grid_intensity_g_per_kwh": -3}, ValueError, "outside"),
    ],
)
def test_measure_inference_bad_arguments(tiny_bert, kwargs, error, message):
    with pytest.raises(error, match=message):
        measure_inference(tiny_bert, [random_token_batch(2, 8)], **kwargs)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batch_1_latency_is_timed_on_each_text_without_its_batchs_padding(tiny_bert, padding_side):
    """Each single forward carries only its own tokens, whatever batch it was padded in: batch size 8 and 1
    time the same shapes."""
    lengths = [3, 3, 3, 3, 3, 3, 3, 20]
    ids = [list(range(5, 5 + length)) for length in lengths]

    def batches(batch_size):
        out = []
        for start in range(0, len(ids), batch_size):
            rows = ids[start:start + batch_size]
            longest = max(map(len, rows))
            pad = [[0] * (longest - len(r)) for r in rows]
            join = (lambda r, p: r + p) if padding_side == "right" else (lambda r, p: p + r)
            out.append({"input_ids": torch.tensor([join(r, p) for r, p in zip(rows, pad)]),
                        "attention_mask": torch.tensor([join([1] * len(r), p) for r, p in zip(rows, pad)]),
                        "token_type_ids": torch.zeros(len(rows), longest, dtype=torch.long)})
        return out

    timed = {}
    for batch_size in (8, 1):
        shapes = []
        hook = tiny_bert.register_forward_pre_hook(
            lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)) and None, with_kwargs=True)
        try:
            measure_inference(tiny_bert, batches(batch_size), latency_samples=8, warmup_batches=0)
        finally:
            hook.remove()
        timed[batch_size] = shapes[-8:]  # the latency forwards come last
    assert timed[8] == timed[1] == [(1, length) for length in lengths]


def test_measure_inference_bad_data(tiny_bert):
    with pytest.raises(ValueError, match="empty"):
        measure_inference(tiny_bert, [])
    with pytest.raises(TypeError, match="iterable of batches"):
        measure_inference(tiny_bert, {"input_ids": torch.ones(2, 3, dtype=torch.long)})


@requires_minilm
@requires_scattertext
def test_measure_inference_on_minilm_and_rotten_tomatoes():
    from transformers import AutoModel, AutoTokenizer

    from hf_bigsmall.assets import load_rotten_tomatoes, minilm_path

    model = AutoModel.from_pretrained(minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    test_set = load_rotten_tomatoes()["test"]
    result = measure_inference(
        model, test_set, tokenizer=tokenizer, batch_size=8, max_samples=16, latency_samples=4, max_length=64,
        country_iso_code="FRA",
    )
    assert result.num_samples == 16 and result.energy_source == "estimate"
    assert result.joules_per_sample > 0 and result.latency_ms_p95 >= result.latency_ms_p50 > 0
    assert "FRA" in result.grid_intensity_origin
    assert result.model_name == str(minilm_path())  # the folder it was loaded from
