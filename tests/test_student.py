import json

import pytest
import torch
from transformers import AutoConfig, BertForSequenceClassification, GPT2LMHeadModel, LlamaForCausalLM

from hf_bigsmall import make_student
from hf_bigsmall.distillation.student import spread_layers
from tests.testing_utils import random_token_batch, tiny_bert_config, tiny_gpt2_config, tiny_llama_config

# (model class, config, the layer list inside the model, the name of the layer list in state_dict keys)
ARCHITECTURES = {
    "bert": (BertForSequenceClassification, tiny_bert_config, lambda m: m.bert.encoder.layer),
    "gpt2": (GPT2LMHeadModel, tiny_gpt2_config, lambda m: m.transformer.h),
    "llama": (LlamaForCausalLM, tiny_llama_config, lambda m: m.model.layers),
}


def test_spread_layers_follows_distilbert():
    assert spread_layers(12, 6) == [0, 2, 4, 7, 9, 11]
    assert spread_layers(4, 2) == [0, 3]
    assert spread_layers(6, 1) == [5]
    assert spread_layers(4, 4) == [0, 1, 2, 3]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_layers_are_copied_from_the_chosen_teacher_layers(arch):
    model_class, make_config, layers_of = ARCHITECTURES[arch]
    teacher = model_class(make_config(num_hidden_layers=6) if arch != "gpt2" else make_config(n_layer=6))
    student = make_student(teacher, num_layers=3, teacher_layers=[1, 3, 5])

    assert type(student) is type(teacher) and student.config.num_hidden_layers == 3
    assert len(layers_of(student)) == 3
    for student_index, teacher_index in enumerate([1, 3, 5]):
        student_layer = layers_of(student)[student_index].state_dict()
        teacher_layer = layers_of(teacher)[teacher_index].state_dict()
        assert student_layer.keys() == teacher_layer.keys()
        for key in student_layer:
            torch.testing.assert_close(student_layer[key], teacher_layer[key], rtol=0, atol=0)
    torch.testing.assert_close(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    head = {k: v for k, v in student.state_dict().items() if k.startswith(("classifier", "lm_head"))}
    assert head and all(torch.equal(v, teacher.state_dict()[k]) for k, v in head.items())
    assert student.config.distillation == {
        "teacher": student.config.distillation["teacher"],
        "teacher_class": type(teacher).__name__,
        "teacher_num_layers": 6,
        "teacher_layers": [1, 3, 5],
        "initialized_from_teacher": True,
    }
    # a student made of all the teacher's layers is the teacher
    clone = make_student(teacher, num_layers=6)
    batch = random_token_batch()
    teacher.eval(), clone.eval()
    torch.testing.assert_close(clone(**batch).logits, teacher(**batch).logits)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_narrower_student_is_random_and_consistent(arch):
    model_class, make_config, _ = ARCHITECTURES[arch]
    teacher = model_class(make_config())
    student = make_student(teacher, num_layers=2, hidden_size=16)
    config = student.config
    assert config.hidden_size == 16 and config.num_hidden_layers == 2
    assert config.distillation["initialized_from_teacher"] is False
    if arch == "llama":
        assert config.head_dim * config.num_attention_heads == 16
    if arch != "gpt2":  # GPT-2's n_inner=None already follows the width
        assert config.intermediate_size == teacher.config.intermediate_size // 2
    batch = random_token_batch()
    out = student(**batch)
    batch_size, seq_len = batch["input_ids"].shape
    expected = (batch_size, teacher.config.num_labels) if arch == "bert" else (batch_size, seq_len, teacher.config.vocab_size)
    assert tuple(out.logits.shape) == expected


def test_record_survives_save_and_reload(tmp_path):
    teacher = BertForSequenceClassification(tiny_bert_config())
    teacher.config._name_or_path = "org/bert-teacher"
    make_student(teacher, num_layers=2).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["distillation"]
    assert saved["teacher"] == "org/bert-teacher" and saved["teacher_layers"] == [0, 3]
    assert AutoConfig.from_pretrained(tmp_path).distillation == saved


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"num_layers": 5}, ValueError, "between 1 and the teacher's 4"),
        ({"num_layers": 0}, ValueError, "between 1"),
        ({"num_layers": 2, "teacher_layers": [0, 4]}, ValueError, r"\[0, 3\]"),
        ({"num_layers": 2, "teacher_layers": [0]}, ValueError, "must list 2"),
        ({"num_layers": 2, "hidden_size": 30}, ValueError, "divisible"),
    ],
)
def test_bad_arguments_raise(kwargs, error, message):
    with pytest.raises(error, match=message):
        make_student(BertForSequenceClassification(tiny_bert_config()), **kwargs)


def test_not_a_transformers_model_raises():
    with pytest.raises(TypeError, match="PreTrainedModel"):
        make_student(torch.nn.Linear(2, 2), num_layers=1)


def _assert_student_is_teacher_subset(student, teacher, teacher_layers):
    """Every student tensor is the teacher's, layer `i` from teacher layer `teacher_layers[i]`."""
    teacher_state = teacher.state_dict()
    for key, tensor in student.state_dict().items():
        source = key
        if ".layers." in key:
            prefix, rest = key.split(".layers.", 1)
            index, tail = rest.split(".", 1)
            source = f"{prefix}.layers.{teacher_layers[int(index)]}.{tail}"
        assert torch.equal(tensor, teacher_state[source]), key


@pytest.mark.parametrize("head_dim", [16, 4])  # attention wider, then narrower, than hidden_size
def test_explicit_head_dim_is_kept(head_dim):
    # Qwen3-style configs set head_dim on its own: heads * head_dim need not be hidden_size
    teacher = LlamaForCausalLM(tiny_llama_config(head_dim=head_dim)).eval()
    assert teacher.config.head_dim * teacher.config.num_attention_heads != teacher.config.hidden_size
    student = make_student(teacher, num_layers=2).eval()
    assert student.config.head_dim == head_dim
    assert student.config.distillation["initialized_from_teacher"] is True
    _assert_student_is_teacher_subset(student, teacher, [0, 3])
    # a narrower student keeps the teacher's head size too, since it never followed hidden_size
    narrow = make_student(teacher, num_layers=2, hidden_size=16)
    assert narrow.config.head_dim == head_dim and narrow.config.hidden_size == 16
    narrow(**random_token_batch())
    # where the head size did follow hidden_size, it still does
    derived = make_student(LlamaForCausalLM(tiny_llama_config()), num_layers=2, hidden_size=16)
    assert derived.config.head_dim * derived.config.num_attention_heads == 16


def test_width_pruned_teacher_then_depth():
    from hf_bigsmall.pruning.importance import compute_importance
    from hf_bigsmall.pruning.width import prune_width

    torch.manual_seed(0)
    teacher = LlamaForCausalLM(tiny_llama_config()).eval()
    calibration = random_token_batch(batch_size=8, seq_len=10)["input_ids"]
    # two of four heads go: 2 * head_dim 8 = 16 != hidden_size 32
    importance = compute_importance(teacher, calibration, seq_len=10)
    prune_width(teacher, importance, num_attention_heads=2, intermediate_size=48)
    assert teacher.config.num_attention_heads * teacher.config.head_dim != teacher.config.hidden_size
    student = make_student(teacher, num_layers=2, teacher_layers=[1, 2]).eval()
    assert (student.config.num_attention_heads, student.config.head_dim) == (2, 8)
    assert student.config.distillation["initialized_from_teacher"] is True
    _assert_student_is_teacher_subset(student, teacher, [1, 2])
    # the student is the teacher with layers 0 and 3 skipped: same output as running those layers only
    batch = random_token_batch()
    with torch.no_grad():
        teacher.model.layers = torch.nn.ModuleList([teacher.model.layers[1], teacher.model.layers[2]])
        teacher.config.num_hidden_layers = 2
        expected = teacher(**batch, use_cache=False).logits
        torch.testing.assert_close(student(**batch, use_cache=False).logits, expected)
