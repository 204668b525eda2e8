"""int8 on CPU: export a transformers model to ONNX, check the export, quantize it with ONNX Runtime; and run it.

Dynamic quantization (weights stored as int8, activations quantized per batch at run time) needs no
calibration data and suits transformer encoders and decoders, whose time goes to MatMuls (Zafrir et
al., 2019, "Q8BERT"; Jacob et al., 2018 for the integer arithmetic). The folder written holds
`model.onnx`, the source `config.json` with a `quantization` record, and the tokenizer; it loads with
`onnxruntime.InferenceSession("<folder>/model.onnx")` or `OnnxModelRunner`, which takes the keyword
tensors a transformers model takes and returns an output with `.logits`, so `compare_models` measures
it with the same code, batches and timers as every PyTorch model beside it; only its quality is scored
one input at a time, since run-time activation scales tie an input's outputs to its batch
(`OnnxModelRunner.outputs_depend_on_batch`).
"""

from __future__ import annotations

import inspect
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers.utils import logging

from ..utils.heads import TEXT_CLASSIFICATION, TEXT_GENERATION, task_of
from .config import ONNX_FILE, QUANTIZATION_KEY

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.get_logger(__name__)

OPSET = 17
# the exported fp32 graph must reproduce PyTorch's logits to this (absolute, plus relative to their size)
_EXPORT_TOLERANCE = 1e-3
_PROBE_TEXTS = ("A short probe.", "A longer probe text, so that the first one is padded in the batch.")
# the operators ONNX Runtime's dynamic quantization puts in a graph: they quantize an activation with one scale
# (and zero point) computed from the whole tensor at every call
_RUN_TIME_ACTIVATION_QUANTIZERS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})


def _logits_module(model: PreTrainedModel, input_names: list[str], causal: bool):
    """The module that is traced: tensors in, in a fixed order; logits out (no cache, no output dict)."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            inputs = dict(zip(input_names, tensors))
            if causal:
                inputs["use_cache"] = False
            return self.model(**inputs).logits

    # the exporter restores the wrapper's training mode afterwards, and a new module starts in training
    # mode: that would switch dropout on in the caller's model
    return LogitsOnly().eval()


def model_input_names(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The tokenizer outputs that the model's forward takes, input_ids first."""
    accepted = set(inspect.signature(model.forward).parameters)
    names = [name for name in tokenizer.model_input_names if name in accepted]
    if "input_ids" not in names:
        raise ValueError(f"{type(model).__name__} does not take input_ids from its tokenizer "
                         f"({tokenizer.model_input_names}): only text models can be exported to ONNX here.")
    if "attention_mask" not in names and "attention_mask" in accepted:
        names.append("attention_mask")
    return ["input_ids"] + [name for name in names if name != "input_ids"]


def probe_batch(tokenizer: PreTrainedTokenizerBase, input_names: list[str]) -> dict[str, Any]:
    """Two texts of different lengths, right-padded by hand (a GPT-2 tokenizer has no pad token)."""
    import torch

    encoded = [tokenizer(text) for text in _PROBE_TEXTS]
    longest = max(len(e["input_ids"]) for e in encoded)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    batch: dict[str, Any] = {}
    for name in input_names:
        rows = []
        for e in encoded:
            values = list(e[name]) if name in e else [1] * len(e["input_ids"])
            pad = pad_id if name == "input_ids" else 0
            rows.append(values + [pad] * (longest - len(values)))
        batch[name] = torch.tensor(rows, dtype=torch.long)
    return batch


def _max_difference(reference, candidate, attention_mask, causal: bool) -> float:
    import numpy as np

    difference = np.abs(reference - candidate)
    if causal:  # positions that are padding are never read
        difference = difference[attention_mask.astype(bool)]
    return float(difference.max())


def _export(module, args: tuple, path: Path, input_names: list[str], dynamic_axes: dict) -> None:
    import torch

    with warnings.catch_warnings():
        # the trace's warnings about Python values it froze are answered by the check on padded inputs
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*")
        # the TorchScript exporter: it needs no extra package (the torch.export one needs onnxscript) and
        # handles the transformers models the kit trains (BERT, GPT-2, Llama)
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=input_names, output_names=["logits"],
                          dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=True)


def export_onnx_int8(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, output_dir: Path,
                     task: str) -> dict[str, Any]:
    """Export `model` (fp32, CPU) to ONNX, check it, quantize to int8 into `output_dir / model.onnx`.

    Returns what the record in config.json states about the export (opset, inputs, the check).

    Raises:
        ValueError: the model cannot be traced to ONNX, or the exported graph does not reproduce
            the model's logits (a data-dependent branch the trace froze).
    """
    import numpy as np
    import onnx  # noqa: F401  (onnxruntime's quantizer reads and writes the graph with it)
    import onnxruntime
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    causal = task == TEXT_GENERATION
    model = model.float().cpu().eval()
    input_names = model_input_names(model, tokenizer)
    probe = probe_batch(tokenizer, input_names)
    with torch.inference_mode():
        reference = model(**probe, **({"use_cache": False} if causal else {})).logits.float().numpy()
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    dynamic_axes["logits"] = {0: "batch", 1: "sequence"} if causal else {0: "batch"}
    feed = {name: tensor.numpy() for name, tensor in probe.items()}
    mask = feed.get("attention_mask", np.ones_like(feed["input_ids"]))

    with tempfile.TemporaryDirectory(dir=output_dir) as scratch:
        fp32_path = Path(scratch) / "model-fp32.onnx"
        try:
            _export(_logits_module(model, input_names, causal), tuple(probe[name] for name in input_names),
                    fp32_path, input_names, dynamic_axes)
        except Exception as error:  # any tracing failure means this model type cannot be exported
            raise ValueError(f"ONNX export of {type(model).__name__} ({model.config.model_type}) failed: {error}. "
                             "ONNX Runtime int8 needs a model that torch.onnx can trace; on a GPU, "
                             "quantize with device='cuda' (torchao) instead.") from error
        session = onnxruntime.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
        export_difference = _max_difference(reference, session.run(["logits"], feed)[0], mask, causal)
        if not export_difference <= _EXPORT_TOLERANCE * (1 + float(np.abs(reference).max())):
            raise ValueError(f"The ONNX export of {type(model).__name__} does not reproduce its logits (max "
                             f"difference {export_difference:.3g}): the trace froze a data-dependent branch, so "
                             "this model type cannot be quantized with ONNX Runtime here.")
        quantized_path = output_dir / ONNX_FILE
        # int8 weights are symmetric (ONNX Runtime's default for QInt8), so pruned zeros stay exact zeros;
        # a scale per output channel rather than per matrix: on the quickstart's compacted student it halved
        # the largest logit change and raised agreement with fp32 from 95.7% to 97.7% of the test
        # reviews, at the same speed (BENCHMARKS.md, "Quantization")
        quantize_dynamic(str(fp32_path), str(quantized_path), weight_type=QuantType.QInt8, per_channel=True)
    session = onnxruntime.InferenceSession(str(quantized_path), providers=["CPUExecutionProvider"])
    int8_difference = _max_difference(reference, session.run(["logits"], feed)[0], mask, causal)
    logger.info(f"Exported {type(model).__name__} to ONNX (max logit difference {export_difference:.2g}) and "
                f"quantized it to int8 (max logit change {int8_difference:.2g}).")
    return {"format": "onnx", "file": ONNX_FILE, "opset": OPSET, "inputs": input_names,
            "export_max_logit_difference": export_difference, "int8_max_logit_change": int8_difference}


def quantizes_activations_at_run_time(onnx_path: str | os.PathLike) -> bool:
    """Whether the graph at `onnx_path` quantizes activations with scales computed at every call (dynamic int8).

    Such a graph takes one scale per tensor per call: a padded batch shares it across its rows, padding
    included, so one input's outputs depend on the other inputs it is batched with.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    operators = {node.op_type for node in graph.node}
    # control flow (If/Loop/Scan) keeps nodes in subgraphs
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                operators.update(inner.op_type for inner in attribute.g.node)
    return bool(operators & _RUN_TIME_ACTIVATION_QUANTIZERS)


class OnnxModelRunner:
    """Run a folder written by `quantize(..., device="cpu")` with ONNX Runtime on the CPU.

    Args:
        model_dir: the folder (`model.onnx`, `config.json`, tokenizer).
        num_threads: intra-op threads of the session; defaults to `torch.get_num_threads()`, so an
            ONNX model and a PyTorch model measured side by side use the same number of cores.

    Attributes:
        config: the `PretrainedConfig` read from the folder (task head, labels, vocabulary).
        task: `"text-classification"` or `"text-generation"`.
        outputs_depend_on_batch: True when the graph quantizes activations at run time (dynamic int8),
            with one scale per tensor for the whole batch, padding included: an input's logits then change
            with the inputs batched beside it. `compare_models` scores such a model one input at a time,
            unpadded, as batch-1 serving runs it.

    Example:

    ```python
    from hf_bigsmall.quantization import OnnxModelRunner

    model = OnnxModelRunner("bigsmall_output/student-int8")
    logits = model(**tokenizer("a fine film", return_tensors="pt")).logits
    ```
    """

    training = False

    def __init__(self, model_dir: str | os.PathLike, num_threads: int | None = None):
        from ..utils.import_utils import require

        require("onnxruntime", extra="onnx", purpose="running ONNX Runtime exports")
        import onnxruntime
        import torch
        from transformers import AutoConfig

        self.path = Path(model_dir)
        self.config = AutoConfig.from_pretrained(self.path)
        self.task = task_of(self.config)
        self.record: dict[str, Any] = getattr(self.config, QUANTIZATION_KEY, None) or {}
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(self.path / self.record.get("file", ONNX_FILE)), options,
                                                    providers=["CPUExecutionProvider"])
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.outputs_depend_on_batch = quantizes_activations_at_run_time(self.path / self.record.get("file", ONNX_FILE))
        self.device = torch.device("cpu")
        self.name_or_path = str(self.path)

    def eval(self) -> OnnxModelRunner:
        return self

    def forward(self, **inputs: Any):
        """Keyword tensors in (extra ones such as `labels` are ignored), an output with `.logits` out."""
        import numpy as np
        import torch
        from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput

        input_ids = inputs.get("input_ids")
        if input_ids is None:
            raise ValueError("OnnxModelRunner needs input_ids.")
        feed = {}
        for name in self.input_names:
            value = inputs.get(name)
            if value is None:  # what the PyTorch model assumes when it is not given
                value = torch.zeros_like(input_ids) if name == "token_type_ids" else torch.ones_like(input_ids)
            feed[name] = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value, dtype=np.int64)
        logits = torch.from_numpy(self.session.run(["logits"], feed)[0])
        return SequenceClassifierOutput(logits=logits) if self.task == TEXT_CLASSIFICATION else CausalLMOutput(logits=logits)

    __call__ = forward

    def parameter_counts(self) -> tuple[int, int, float]:
        """(parameters, non-zero parameters, sparsity) of the model that was quantized, from its record."""
        return (int(self.record.get("parameters", 0)), int(self.record.get("nonzero_parameters", 0)),
                float(self.record.get("sparsity", 0.0)))

    def __repr__(self) -> str:
        return f"OnnxModelRunner({str(self.path)!r}, inputs={self.input_names})"
