"""`OnnxModelRunner`: an ONNX model folder that `compare_models` and `measure_inference` run like a model.

It takes the keyword tensors a transformers model takes and returns an output with `.logits`, so
the comparison measures it with the same code, the same batches and the same timers as every
PyTorch model beside it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import ONNX_FILE, QUANTIZATION_KEY


class OnnxModelRunner:
    """Run a folder written by `quantize(..., device="cpu")` with ONNX Runtime on the CPU.

    Args:
        model_dir: the folder (`model.onnx`, `config.json`, tokenizer).
        num_threads: intra-op threads of the session; defaults to `torch.get_num_threads()`, so an
            ONNX model and a PyTorch model measured side by side use the same number of cores.

    Attributes:
        config: the `PretrainedConfig` read from the folder (task head, labels, vocabulary).
        task: `"text-classification"` or `"text-generation"`.

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

        require("onnxruntime")
        import onnxruntime
        import torch
        from transformers import AutoConfig

        from ..reporting.compare import task_of

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
        self.device = torch.device("cpu")
        self.name_or_path = str(self.path)

    def eval(self) -> OnnxModelRunner:
        return self

    def forward(self, **inputs: Any):
        """Keyword tensors in (extra ones such as `labels` are ignored), an output with `.logits` out."""
        import numpy as np
        import torch
        from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput

        from ..reporting.compare import CLASSIFICATION

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
        return SequenceClassifierOutput(logits=logits) if self.task == CLASSIFICATION else CausalLMOutput(logits=logits)

    __call__ = forward

    def parameter_counts(self) -> tuple[int, int, float]:
        """(parameters, non-zero parameters, sparsity) of the model that was quantized, from its record."""
        return (int(self.record.get("parameters", 0)), int(self.record.get("nonzero_parameters", 0)),
                float(self.record.get("sparsity", 0.0)))

    def __repr__(self) -> str:
        return f"OnnxModelRunner({str(self.path)!r}, inputs={self.input_names})"
