"""`write_quantized_folder`: the checks, the `.partial` folder, the record and the tokenizer every export shares.

A backend's own code then only writes its weights (`write(job)`): the ONNX Runtime and torchao
built-ins and a user's backend alike. The folder is written through `hf_bigsmall.utils.files`, so it
carries the kit's marker (`.hf_bigsmall.json`) and appears whole or not at all.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers.utils import logging

from ...utils.files import fresh_partial_dir
from ...utils.heads import TEXT_CLASSIFICATION, task_of
from ..config import (
    QUANTIZATION_KEY,
    check_full_precision_source,
    check_quantized_output,
    has_kit_record,
    publish_export,
)
from ..record import QuantizationRecord
from .base import get_quantization_backend

logger = logging.get_logger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")


@dataclass
class ExportJob:
    """What a backend's `write` gets: where to read, where to write, and the record to extend.

    Attributes:
        model_dir: the full-precision source folder (checked: saved, not quantized, with a tokenizer).
        folder: the `.partial` folder to write the weights into (renamed into place afterwards).
        method: the method asked for (one of the backend's schemes).
        device: where the model will run.
        task: `"text-classification"` or `"text-generation"`.
        auto_class: the transformers Auto class that loads the source with its head.
        tokenizer: the source's tokenizer (saved into the folder afterwards).
        record: the `quantization` record of `config.json` (method, scheme, backend, device, source);
            add what your export knows (engine version, file name, a check's result).
    """

    model_dir: Path
    folder: Path
    method: str
    device: str
    task: str
    auto_class: Any
    tokenizer: Any
    record: dict[str, Any]


def write_quantized_folder(model_dir: str | os.PathLike, output_dir: str | os.PathLike, *, backend: str, method: str,
                           device: str, write: Callable[[ExportJob], None]) -> Path:
    """Check a request, then call `write(job)` inside a fresh `.partial` folder and publish it as `output_dir`.

    Before anything is written: `model_dir` must be a saved, full-precision model of a task `backend`
    takes, with a tokenizer; `output_dir` must be new or an earlier quantized export of the kit. After
    `write`, `config.json` gets the record (written from the source's config unless `write` saved one
    that already carries it) and the tokenizer is saved beside it. A failure removes the `.partial` folder.

    Raises:
        ValueError: see `check_full_precision_source` and `check_quantized_output`; a model without a
            classification or causal LM head, a task the backend does not take, or no tokenizer.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    entry = get_quantization_backend(backend)
    model_dir, output_dir = check_full_precision_source(model_dir), Path(output_dir)
    config = AutoConfig.from_pretrained(model_dir)
    task = task_of(config)  # a model without a classification or causal LM head raises here
    if task not in entry.tasks:
        raise ValueError(f"The {backend} backend takes {entry.tasks} models, and {model_dir} is a {task} model: use a "
                         "backend that takes it (see quantization_backend_names()).")
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"{model_dir} has no tokenizer: save it beside the model (tokenizer.save_pretrained) so the "
                         "quantized folder is usable on its own.")
    check_quantized_output(model_dir, output_dir)
    auto_class = AutoModelForSequenceClassification if task == TEXT_CLASSIFICATION else AutoModelForCausalLM
    record = {"method": method, "scheme": entry.schemes[method], "backend": backend, "device": device,
              "source": str(model_dir)}

    partial = fresh_partial_dir(output_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        write(ExportJob(model_dir=model_dir, folder=partial, method=method, device=device, task=task,
                        auto_class=auto_class, tokenizer=tokenizer, record=record))
        if not has_kit_record(partial):
            saved = AutoConfig.from_pretrained(partial) if (partial / "config.json").is_file() else config
            QuantizationRecord.from_dict(record).write(saved)
            saved.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
    except BaseException:  # a failed export or save leaves no half-written folder behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    publish_export(partial, output_dir)  # an earlier export only, as checked first
    return output_dir
