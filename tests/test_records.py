"""The step records kept in config.json: they read old blocks back unchanged and render the card's sections."""

import json

import pytest

from hf_bigsmall.distillation.record import DistillationRecord, TeacherCorrectionRecord, TeacherLogitsRecord
from hf_bigsmall.hub.card import build_model_card
from hf_bigsmall.pruning.record import SparsityRecord, VocabularyTrimmingRecord, WidthRecord
from hf_bigsmall.quantization.record import QuantizationRecord

from .testing_utils import tiny_bert_config

# as a kit-written config.json holds it: keys sorted, a null, a nested record, a key no record declares
DISTILLATION_BLOCK = {"alpha_ce": 0.0, "alpha_kd": 1.0, "dataset": None, "kd_loss": "forward_kl",
                      "teacher": "embedded/all-MiniLM-L6-v2", "teacher_logits": {"top_k": None, "tail_samples": None},
                      "teacher_layers": [0, 3], "temperature": 2.0, "written_by_a_later_version": {"x": 1}}


def test_a_block_reads_back_with_its_keys_order_nulls_and_unknown_keys():
    record = DistillationRecord.from_dict(DISTILLATION_BLOCK)
    assert record.teacher == "embedded/all-MiniLM-L6-v2" and record.teacher_layers == [0, 3]
    assert isinstance(record.teacher_logits, TeacherLogitsRecord) and record.teacher_logits.top_k is None
    assert record.extra == {"written_by_a_later_version": {"x": 1}}
    assert json.dumps(record.to_dict()) == json.dumps(DISTILLATION_BLOCK)  # same keys, same order, same values


def test_a_nested_block_that_is_not_an_object_is_kept_and_not_interpreted():
    record = DistillationRecord.from_dict({"teacher": "t", "teacher_correction": "by hand"})
    assert record.teacher_correction is None and record.to_dict() == {"teacher": "t", "teacher_correction": "by hand"}
    assert "teacher correction |" not in "\n".join(record.card_section())


def test_a_record_made_in_code_writes_the_fields_it_sets_in_order():
    from transformers import BertConfig

    config = BertConfig(**tiny_bert_config().to_dict())
    VocabularyTrimmingRecord(original_vocab_size=100, vocab_size=40, num_texts=8).write(config)
    assert list(config.vocabulary_trimming) == ["original_vocab_size", "vocab_size", "num_texts"]
    assert VocabularyTrimmingRecord.from_config(config) == VocabularyTrimmingRecord(100, 40, None, 8)
    as_file = {}
    TeacherCorrectionRecord(source="org/teacher", tokens=10).write(as_file)  # the dict of a config.json
    assert as_file == {"teacher_correction": {"from": "org/teacher", "tokens": 10}}
    assert DistillationRecord.from_config(as_file) is None


def test_a_block_that_is_not_an_object_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="'sparsity' block of config.json must be a JSON object"):
        SparsityRecord.from_dict(["magnitude"])


def test_the_card_is_the_records_sections_in_order(tmp_path):
    from transformers import BertForSequenceClassification

    blocks = {
        "distillation": DISTILLATION_BLOCK,
        "sparsity": {"method": "wanda", "per_layer": {"bert.encoder.layer.0.output.dense": 0.5}, "schedule": "one_shot"},
        "width_pruning": {"criterion": "activation importance", "intermediate_size": [64, 48]},
        "vocabulary_trimming": {"num_texts": 8, "original_vocab_size": 1000, "vocab_size": 99},
        "quantization": {"backend": "torchao", "device": "cuda", "method": "int8", "scheme": "int8_weight_only"},
    }
    model = BertForSequenceClassification(tiny_bert_config())
    for key, block in blocks.items():
        setattr(model.config, key, block)
    model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    sections = [*DistillationRecord.from_config(config).card_section(),
                *SparsityRecord.from_config(config).card_section(tmp_path / "model"),
                *WidthRecord.from_config(config).card_section(),
                *VocabularyTrimmingRecord.from_config(config).card_section(),
                *QuantizationRecord.from_config(config).card_section()]
    text = build_model_card(tmp_path / "model").text
    assert "\n".join(["## How it was made", "", *sections]) in text
    assert sections.index("### Pruning") < sections.index("### Width") < sections.index("### Quantization")
    # a quantized transformers checkpoint: transformers loads it, on the GPU it was made for
    assert 'from_pretrained("model", device_map="cuda")' in text


@pytest.mark.parametrize("backend, fmt, expected", [
    ("onnxruntime", "onnx", "onnxruntime.InferenceSession"), ("gguf", "gguf", "llama-cli -m m.gguf"),
    ("onnxruntime-genai", "onnxruntime-genai", "og.Model"), ("torchao", None, 'device_map="cuda"'),
    ("not-registered", "safetensors", None)])
def test_each_engine_says_how_to_use_its_folder(backend, fmt, expected):
    """The card's "How to use" is the snippet of the backend that made the folder, from the registry."""
    from hf_bigsmall.hub.card import _backend_how_to_use

    record = QuantizationRecord(backend=backend, format=fmt, file="m.gguf")
    lines = _backend_how_to_use(record, "me/model", "model", "LlamaForCausalLM")
    assert (lines is None) if expected is None else expected in "\n".join(lines)
