"""One table of task heads serves the teacher loader, the model card and the comparison."""

import pytest
from transformers import BertForQuestionAnswering, BertModel, GPT2LMHeadModel, LlamaForCausalLM

from hf_bigsmall.distillation.teacher import head_kind
from hf_bigsmall.reporting.compare import task_of
from hf_bigsmall.utils.heads import evaluation_split, task_head
from tests.testing_utils import tiny_bert_config, tiny_gpt2_config, tiny_llama_config


@pytest.mark.parametrize("model, auto_class, tag", [
    (lambda: GPT2LMHeadModel(tiny_gpt2_config()), "AutoModelForCausalLM", "text-generation"),
    (lambda: LlamaForCausalLM(tiny_llama_config()), "AutoModelForCausalLM", "text-generation"),
])
def test_causal_heads_agree_everywhere(model, auto_class, tag):
    model = model()
    assert head_kind(model) == auto_class and task_of(model) == tag
    assert task_head(type(model).__name__).pipeline_tag == tag


def test_heads_without_logits_teach_nothing():
    assert head_kind(BertModel(tiny_bert_config())) is None
    assert head_kind(BertForQuestionAnswering(tiny_bert_config())) is None  # start/end logits, no `logits`
    assert task_head("BertForQuestionAnswering").pipeline_tag == "question-answering"
    with pytest.raises(ValueError, match="Cannot compare"):
        task_of(BertForQuestionAnswering(tiny_bert_config()))


@pytest.mark.parametrize("splits, expected", [
    (["train", "validation", "test"], "validation"), (["train", "test"], "test"), (["train"], None),
])
def test_one_evaluation_split_choice(splits, expected):
    assert evaluation_split(splits) == expected
