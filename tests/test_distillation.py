import json

import pytest
import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    BertModel,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    TrainerCallback,
)

from hf_bigsmall import DistillationConfig, DistillationTrainer, make_student
from hf_bigsmall.distillation.trainer import PROJECTION_NAME
from tests.testing_utils import TINY_VOCAB, GradientRecorder, tiny_bert_config, tiny_gpt2_config, tiny_llama_config

SEQ_LEN = 12


def classification_dataset(n=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, TINY_VOCAB, (n, SEQ_LEN), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row in range(0, n, 2):  # padded rows of different lengths
        attention_mask[row, SEQ_LEN - 2 - row % 5 :] = 0
        input_ids[row][attention_mask[row] == 0] = 0
    labels = torch.randint(0, 2, (n,), generator=generator)
    return Dataset.from_dict({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})


def causal_dataset(n=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, TINY_VOCAB, (n, SEQ_LEN), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    labels = input_ids.clone()
    for row in range(n):  # a different number of target tokens per row: padding and -100 prompts
        pad = row % 4
        if pad:
            attention_mask[row, -pad:] = 0
            labels[row, -pad:] = -100
        labels[row, : row % 3] = -100
    return Dataset.from_dict({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})


def build(arch, student_width=None):
    if arch == "bert":
        teacher = BertForSequenceClassification(tiny_bert_config())
        dataset = classification_dataset()
    elif arch == "gpt2":
        teacher = GPT2LMHeadModel(tiny_gpt2_config())
        dataset = causal_dataset()
    else:
        teacher = LlamaForCausalLM(tiny_llama_config())
        dataset = causal_dataset()
    student = make_student(teacher, num_layers=2, hidden_size=student_width)
    return teacher, student, dataset


def config(tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3,
        logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, seed=0,
        dataloader_drop_last=True,
    )
    kwargs.update(overrides)
    return DistillationConfig(**kwargs)


@pytest.mark.parametrize(
    "arch, student_width, overrides",
    [
        ("bert", None, {}),
        ("bert", 16, {"alpha_hidden": 1.0, "alpha_attention": 1.0, "kd_loss": "jsd"}),
        ("gpt2", None, {"alpha_hidden": 1.0, "hidden_loss": "cosine"}),
        ("gpt2", 16, {"alpha_hidden": 1.0, "kd_loss": "reverse_kl"}),
        ("llama", None, {"alpha_attention": 0.5}),
    ],
)
def test_training_moves_student_and_never_teacher(tmp_path, arch, student_width, overrides):
    teacher, student, dataset = build(arch, student_width)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=config(tmp_path, **overrides), train_dataset=dataset
    )
    trainer.train()

    assert not trainer.teacher_model.training
    assert all(not p.requires_grad for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, teacher_before[key], rtol=0, atol=0)
    assert any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items() if k in student_before)

    train_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(train_logs) == 3
    expected = {"loss_kd", "loss_ce"}
    expected |= {"loss_hidden"} if overrides.get("alpha_hidden") else set()
    expected |= {"loss_attention"} if overrides.get("alpha_attention") else set()
    for entry in train_logs:
        assert expected <= entry.keys()
        assert all(entry[name] > -1e-6 and entry[name] == entry[name] for name in expected)
        weights = {"loss_kd": trainer.args.alpha_kd, "loss_ce": trainer.args.alpha_ce,
                   "loss_hidden": trainer.args.alpha_hidden, "loss_attention": trainer.args.alpha_attention}
        # the logged loss is the weighted sum of the logged parts
        assert entry["loss"] == pytest.approx(sum(weights[n] * entry[n] for n in expected), rel=1e-4)
    assert hasattr(student, PROJECTION_NAME) == bool(student_width and overrides.get("alpha_hidden"))

    # evaluation reports the parts of eval_loss too (and they never leak into the training logs)
    metrics = trainer.evaluate(dataset, metric_key_prefix="eval")
    assert metrics["eval_loss"] == pytest.approx(sum(weights[n] * metrics[f"eval_{n}"] for n in expected), rel=1e-4)
    assert trainer.state.log_history[-1]["eval_loss_kd"] == metrics["eval_loss_kd"]
    assert {f"test_{n}" for n in expected} <= trainer.predict(dataset).metrics.keys()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_copied_layer_aligns_with_its_teacher_layer_even_when_one_side_is_last(tmp_path, arch):
    # decoders return their last layer's output after the final norm and every other layer's before it: a student's
    # last layer copied from a teacher layer that is not the teacher's last used to be compared across that norm
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    torch.manual_seed(0)
    teacher = (GPT2LMHeadModel(tiny_gpt2_config(n_layer=4)) if arch == "gpt2"
               else LlamaForCausalLM(tiny_llama_config(initializer_range=0.2))).eval()
    ids = torch.randint(1, TINY_VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    # the first two layers copied: the student's last beside the teacher's second (not its last); and all four
    for layers in ([0, 1], [0, 1, 2, 3]):
        student = make_student(teacher, num_layers=len(layers), teacher_layers=layers)
        args = DistillationConfig(output_dir=str(tmp_path), alpha_kd=0.0, alpha_ce=0.0, alpha_hidden=1.0,
                                  report_to="none", use_cpu=True, fused_lm_head_loss=False)
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args,
                                      train_dataset=Dataset.from_dict({k: v.tolist() for k, v in batch.items()}))
        assert trainer.layer_map == layers
        with torch.no_grad():
            assert trainer.compute_loss(trainer.model.eval(), dict(batch)).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "arch, overrides",
    [
        ("bert", {"alpha_hidden": 1.0, "alpha_attention": 1.0}),
        ("gpt2", {"alpha_hidden": 1.0}),
        ("gpt2", {"alpha_hidden": 1.0, "kd_chunk_size": 5}),  # token KD over chunks of 5 positions
    ],
)
def test_gradient_accumulation_is_exact(tmp_path, arch, overrides):
    runs = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        torch.manual_seed(0)
        teacher, student, dataset = build(arch, student_width=16)
        recorder = GradientRecorder()
        args = config(
            tmp_path, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
            max_steps=1, max_grad_norm=0.0, **overrides,
        )
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=dataset.select(range(4)),
            callbacks=[recorder],
        )
        trainer.train()
        runs.append((recorder.gradients, trainer.state.log_history[0]))
    (big_batch, big_logs), (accumulated, accumulated_logs) = runs
    assert big_batch.keys() == accumulated.keys() and any(k.startswith(PROJECTION_NAME) for k in big_batch)
    for name in big_batch:
        torch.testing.assert_close(accumulated[name], big_batch[name], rtol=1e-4, atol=1e-6)
    for key in ("loss", "loss_kd", "loss_ce", "loss_hidden"):
        assert accumulated_logs[key] == pytest.approx(big_logs[key], rel=1e-4)


def test_saved_student_records_how_it_was_made_and_reloads(tmp_path):
    teacher, student, dataset = build("bert", student_width=16)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=config(tmp_path, alpha_hidden=1.0, temperature=3.0),
        train_dataset=dataset,
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "student"))
    record = json.loads((tmp_path / "student" / "config.json").read_text())["distillation"]
    assert record["temperature"] == 3.0 and record["alpha_hidden"] == 1.0 and record["kd_loss"] == "forward_kl"
    assert record["teacher_layers"] == [0, 3] and record["layer_map"] == [0, 3]
    assert record["initialized_from_teacher"] is False and record["hidden_projection"] is True

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student")
    assert not hasattr(reloaded, PROJECTION_NAME)  # a training-only adapter, dropped on reload
    batch = {k: torch.tensor(dataset[:2][k]) for k in ("input_ids", "attention_mask")}
    student.eval()
    torch.testing.assert_close(reloaded(**batch).logits, student(**batch).logits)


class ZeroWeightAndLog(TrainerCallback):
    """Stands in for the pruning (re-zeroes weights) and energy (logs via trainer.log) callbacks."""

    def __init__(self):
        self.trainer = None

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            model.bert.encoder.layer[0].intermediate.dense.weight[:, :8] = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.log({"energy_kwh": 1e-6 * state.global_step})


def test_other_callbacks_keep_working(tmp_path):
    teacher, student, dataset = build("bert")
    callback = ZeroWeightAndLog()
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=config(tmp_path), train_dataset=dataset, callbacks=[callback]
    )
    callback.trainer = trainer
    trainer.train()
    assert (student.bert.encoder.layer[0].intermediate.dense.weight[:, :8] == 0).all()
    assert [e["energy_kwh"] for e in trainer.state.log_history if "energy_kwh" in e] == pytest.approx([1e-6, 2e-6, 3e-6])


def test_evaluation_reports_the_distillation_loss(tmp_path):
    teacher, student, dataset = build("gpt2")
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=config(tmp_path, per_device_eval_batch_size=4),
        train_dataset=dataset, eval_dataset=dataset,
    )
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] > 0 and not trainer._loss_parts  # eval never feeds the train logs


# ---------------------------------------------------------------------------------------------
# errors before training
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"alpha_kd": 0.0, "alpha_ce": 0.0}, "All loss weights are zero"),
        ({"alpha_kd": -1.0}, "must be >= 0"),
        ({"kd_loss": "kl"}, "kd_loss must be one of"),
        ({"kd_loss": "jsd", "jsd_beta": 1.0}, "forward_kl"),
        ({"hidden_loss": "l1"}, "hidden_loss"),
        ({"teacher_dtype": "int8"}, "teacher_dtype"),
    ],
)
def test_bad_config_raises(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **overrides)


def _mismatched_pairs():
    bert = BertForSequenceClassification(tiny_bert_config())
    return {
        "vocab": (bert, BertForSequenceClassification(tiny_bert_config(vocab_size=200)), "vocab_size 128 != student vocab_size 200"),
        "num_labels": (bert, BertForSequenceClassification(tiny_bert_config(num_labels=3)), "num_labels=2"),
        "label_map": (
            bert,
            BertForSequenceClassification(tiny_bert_config(id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})),
            "id2label",
        ),
        "no_head": (BertModel(tiny_bert_config()), BertForSequenceClassification(tiny_bert_config()), "returns no logits"),
        "different_heads": (GPT2LMHeadModel(tiny_gpt2_config()), bert, "different task heads"),
    }


@pytest.mark.parametrize("case", ["vocab", "num_labels", "label_map", "no_head", "different_heads"])
def test_incompatible_teacher_raises(tmp_path, case):
    teacher, student, message = _mismatched_pairs()[case]
    with pytest.raises(ValueError, match=message):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path))


@pytest.mark.parametrize("layer_map, message", [([0, 4], "has 4 layers"), ([1], "has 1 entries")])
def test_layer_map_out_of_range_raises(tmp_path, layer_map, message):
    teacher, student, _ = build("gpt2")
    with pytest.raises(ValueError, match=message):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path, layer_map=layer_map))


def test_offline_hub_teacher_raises_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, student, _ = build("gpt2")
    with pytest.raises(ValueError, match="offline"):
        DistillationTrainer(model=student, teacher_model="hf-bigsmall-tests/teacher-never-cached", args=config(tmp_path))


def test_teacher_folder_without_task_head_raises(tmp_path):
    BertModel(tiny_bert_config()).save_pretrained(tmp_path / "backbone")
    student = BertForSequenceClassification(tiny_bert_config())
    with pytest.raises(ValueError, match="no trained SequenceClassification head"):
        DistillationTrainer(model=student, teacher_model=str(tmp_path / "backbone"), args=config(tmp_path))


def test_teacher_loaded_from_folder_and_cast(tmp_path):
    teacher, student, dataset = build("gpt2")
    teacher.save_pretrained(tmp_path / "teacher")
    trainer = DistillationTrainer(
        model=student, teacher_model=str(tmp_path / "teacher"), args=config(tmp_path, teacher_dtype="bfloat16", max_steps=1),
        train_dataset=dataset,
    )
    assert next(trainer.teacher_model.parameters()).dtype == torch.bfloat16
    trainer.train()
    assert isinstance(trainer.teacher_model, GPT2LMHeadModel)  # loaded with the student's kind of head


def test_several_cpu_processes_switch_use_cpu_on(tmp_path, monkeypatch):
    # the real launch is covered by test_two_processes; here only the switch itself
    monkeypatch.setattr("hf_bigsmall.distillation.config.needs_cpu_process_group", lambda use_cpu: not use_cpu)
    args = DistillationConfig(output_dir=str(tmp_path), use_cpu=False, report_to="none")
    assert args.use_cpu is True


@pytest.mark.multiprocess
def test_two_processes(tmp_path):
    from tests.testing_utils import REPO_ROOT, run_accelerate

    output = tmp_path / "result.json"
    run_accelerate(REPO_ROOT / "tests" / "scripts" / "distill_ddp.py", str(output), timeout=300)
    result = json.loads(output.read_text())
    assert result["world_size"] == 2 and result["args_world_size"] == 2
    assert result["student_wrapped_in_ddp"] and not result["teacher_wrapped_in_ddp"]
    assert not result["teacher_training"]
    assert result["student_changed"] and result["students_identical"]
    train_logs = [entry for entry in result["log_history"] if "loss" in entry]
    assert len(train_logs) == 2
    for entry in train_logs:  # parts averaged over 2 steps and 2 processes, exactly as `loss` is
        weighted = 0.5 * entry["loss_kd"] + 0.5 * entry["loss_ce"] + 1.0 * entry["loss_hidden"]
        assert entry["loss"] == pytest.approx(weighted, rel=1e-4)


@pytest.mark.gpu
def test_bf16_distillation_on_gpu(tmp_path):
    teacher, student, dataset = build("gpt2", student_width=16)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, train_dataset=dataset,
        args=config(tmp_path, use_cpu=False, bf16=True, teacher_dtype="bfloat16", alpha_hidden=1.0),
    )
    trainer.train()
    teacher_parameter = next(trainer.teacher_model.parameters())
    assert teacher_parameter.is_cuda and teacher_parameter.dtype == torch.bfloat16
    assert all(torch.isfinite(torch.tensor(e["loss_kd"])) for e in trainer.state.log_history if "loss" in e)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_logged_task_loss_is_the_models_own_next_token_loss(tmp_path, arch):
    """The Trainer counts GPT-2's items unshifted (its loss_type is not the causal-LM one): the trainer counts
    next-token targets for every causal LM, so loss_ce is the mean the model itself reports."""
    torch.manual_seed(0)
    teacher, student, dataset = build(arch)
    rows = dataset.select(range(4))
    batch = {key: torch.tensor(rows[key]) for key in ("input_ids", "attention_mask", "labels")}
    with torch.no_grad():
        expected = student(**batch).loss.item()
    args = config(tmp_path, max_steps=1, learning_rate=0.0, alpha_kd=1.0, alpha_ce=0.0)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=rows)
    trainer.train()
    assert trainer.state.log_history[0]["loss_ce"] == pytest.approx(expected, rel=1e-4)
