"""`LlamaCppModelRunner`: a GGUF folder run by llama.cpp (llama-cpp-python), measured by `compare_models` like a model.

Called with keyword tensors it returns `.logits` for every position from llama.cpp's own forward
(each row's real tokens run alone, padding skipped), so held-out perplexity comes from the engine's
logits on the same tokens as the PyTorch rows. `generate` decodes greedily with llama.cpp's KV cache,
and `measure_generation` times prefill and decode at batch 1 with the same timers as the other engines.
Threads default to `torch.get_num_threads()`, so torch and llama.cpp measured side by side use the same cores.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..utils.heads import TEXT_GENERATION
from .config import QUANTIZATION_KEY
from .engine_timing import padded_logits, time_engine_generation

LLAMACPP_EXTRA = "llamacpp"
# llama.cpp keeps a (context x vocabulary) float32 table of logits when every position's logits are asked
# for: 512 positions of a 49,152-token vocabulary is 100 MB, a model's full context of 8,192 would be 1.6 GB
DEFAULT_CONTEXT_LENGTH = 512
KV_CACHE_TYPES = ("f16", "f32")


def gguf_file_of(model_dir: str | os.PathLike) -> Path | None:
    """The GGUF file of a folder `export_gguf` wrote (named by its record), or None."""
    import json

    model_dir = Path(model_dir)
    try:
        record = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get(QUANTIZATION_KEY) or {}
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(record, dict) or record.get("format") != "gguf" or not record.get("file"):
        return None
    path = model_dir / record["file"]
    return path if path.is_file() else None


def is_gguf_folder(model_dir: str | os.PathLike) -> bool:
    """True for a folder `export_gguf` wrote: a `quantization` record of format gguf naming a file that is there."""
    return gguf_file_of(model_dir) is not None


class LlamaCppModelRunner:
    """Run a folder written by `export_gguf` (or `quantize(..., backend="gguf")`) with llama.cpp on the CPU.

    Args:
        model_dir: the folder (`model-<TYPE>.gguf`, `config.json` with its record, tokenizer).
        num_threads: llama.cpp's threads for prompts and decoding; defaults to `torch.get_num_threads()`.
        context_length: the longest sequence (prompt plus new tokens) it runs; defaults to the model's
            positions, at most `DEFAULT_CONTEXT_LENGTH`.
        kv_cache: `"f16"` (llama.cpp's default, as it is served) or `"f32"` (an unquantized export then
            reproduces transformers' logits to about 1e-7 instead of 1e-4 to 1e-3).

    Example:

    ```python
    from hf_bigsmall.quantization.gguf_runner import LlamaCppModelRunner

    runner = LlamaCppModelRunner("bigsmall_output/student-gguf", num_threads=1)
    tokens, _ = runner.generate(tokenizer("The weather today")["input_ids"], new_tokens=32)
    ```
    """

    training = False

    def __init__(self, model_dir: str | os.PathLike, num_threads: int | None = None,
                 context_length: int | None = None, kv_cache: str = "f16"):
        from ..utils.import_utils import require

        require("llama_cpp", extra=LLAMACPP_EXTRA, purpose="running GGUF files with llama.cpp")
        import torch
        from transformers import AutoConfig

        if kv_cache not in KV_CACHE_TYPES:
            raise ValueError(f"kv_cache must be one of {KV_CACHE_TYPES}, got {kv_cache!r}.")
        self.kv_cache = kv_cache
        self.path = Path(model_dir)
        gguf_file = gguf_file_of(self.path)
        if gguf_file is None:
            raise ValueError(f"{self.path} is not a GGUF folder of the kit (no config.json record naming a .gguf file "
                             "there): export it with export_gguf / quantize(..., backend='gguf') first.")
        self.gguf_file = gguf_file
        self.config = AutoConfig.from_pretrained(self.path)
        self.task = TEXT_GENERATION
        self.record: dict[str, Any] = getattr(self.config, QUANTIZATION_KEY, None) or {}
        self.num_threads = num_threads or torch.get_num_threads()
        positions = getattr(self.config, "max_position_embeddings", None) or getattr(self.config, "n_positions", None)
        self.context_length = int(context_length or min(positions or DEFAULT_CONTEXT_LENGTH, DEFAULT_CONTEXT_LENGTH))
        self.device = torch.device("cpu")
        self.name_or_path = str(self.path)
        self._decoder = self._load(all_logits=False)  # prompts and decoding: only the last position's logits
        self._scorer = None  # every position's logits (perplexity), made when first asked for
        self._counts: tuple[int, int, float] | None = None

    def _load(self, all_logits: bool):
        import llama_cpp

        cache_type = llama_cpp.GGML_TYPE_F32 if self.kv_cache == "f32" else llama_cpp.GGML_TYPE_F16
        return llama_cpp.Llama(model_path=str(self.gguf_file), n_ctx=self.context_length, n_batch=self.context_length,
                               n_ubatch=self.context_length, n_threads=self.num_threads,
                               n_threads_batch=self.num_threads, type_k=cache_type, type_v=cache_type,
                               logits_all=all_logits, verbose=False)

    def eval(self) -> LlamaCppModelRunner:
        return self

    def _check_length(self, length: int) -> None:
        if length > self.context_length:
            raise ValueError(f"{length} tokens exceed the runner's context of {self.context_length}: use shorter "
                             "texts or fewer new tokens, or pass a larger context_length.")

    def prompt_logits(self, token_ids: list[int]):
        """llama.cpp's logits for every position of one sequence, a float32 array (len(token_ids), vocab)."""
        import numpy as np

        self._check_length(len(token_ids))
        if self._scorer is None:
            self._scorer = self._load(all_logits=True)
        self._scorer.reset()
        self._scorer.eval(list(map(int, token_ids)))
        return np.array(self._scorer.scores[: len(token_ids)], dtype=np.float32)

    def forward(self, input_ids=None, attention_mask=None, **ignored: Any):
        """Token ids (and mask) in, an output with `.logits` (batch, sequence, vocab) out; padding gets zeros."""
        if input_ids is None:
            raise ValueError("LlamaCppModelRunner needs input_ids.")
        return padded_logits(self.prompt_logits, self.config.vocab_size, input_ids, attention_mask)

    __call__ = forward

    def _last_logits(self):
        import llama_cpp
        import numpy as np

        pointer = llama_cpp.llama_get_logits_ith(self._decoder.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self._decoder.n_vocab(),))

    def _begin(self, prompt: list[int], new_tokens: int):
        """A fresh sequence: its (prefill, step) functions, each picking the next token greedily."""
        import numpy as np

        self._check_length(len(prompt) + new_tokens + 1)
        decoder, chosen = self._decoder, []
        decoder.reset()

        def prefill() -> None:
            decoder.eval(list(map(int, prompt)))
            chosen.append(int(np.argmax(self._last_logits())))

        def step() -> None:
            decoder.eval([chosen[-1]])
            chosen.append(int(np.argmax(self._last_logits())))

        return prefill, step, chosen

    def generate(self, prompt: list[int], new_tokens: int = 32):
        """Greedy tokens from llama.cpp, and the logits each was chosen from (new_tokens, vocab)."""
        import numpy as np

        prefill, step, chosen = self._begin(prompt, new_tokens)
        prefill()
        step_logits = [self._last_logits().copy()]
        for _ in range(new_tokens - 1):
            step()
            step_logits.append(self._last_logits().copy())
        return chosen[:new_tokens], np.stack(step_logits)

    def measure_generation(self, prompts, *, new_tokens: int = 32, warmup: int = 1, backend: str = "auto",
                           cpu_tdp_watts: float | None = None, cpu_threads: int | None = None):
        """Prefill latency, decode tokens/s and joules per token at batch 1, as `measure_generation` for torch.

        Prefill is the prompt's forward and the choice of the first token; each decode step runs the
        model on the last token with the KV cache and picks the next one greedily.
        """
        def begin(prompt: list[int]):
            prefill, step, _ = self._begin(prompt, new_tokens)
            return prefill, step

        return time_engine_generation(prompts, begin, new_tokens=new_tokens, warmup=warmup, device=self.device,
                                      backend=backend, cpu_tdp_watts=cpu_tdp_watts, cpu_threads=cpu_threads)

    def parameter_counts(self) -> tuple[int, int, float]:
        """(parameters, non-zero parameters, sparsity) of the weights in the GGUF file, as llama.cpp reads them.

        Counted from the file (dequantized), so a zero the format kept is a zero here; a tied output
        layer written twice (GPT-2) counts once, as torch counts tied weights. Sparsity is the
        fraction of zeros in the transformer blocks' matrices.
        """
        if self._counts is None:
            self._counts = gguf_parameter_counts(self.gguf_file)
        return self._counts

    def __repr__(self) -> str:
        return f"LlamaCppModelRunner({str(self.path)!r}, threads={self.num_threads}, kv_cache={self.kv_cache!r})"


def gguf_parameter_counts(path: str | os.PathLike) -> tuple[int, int, float]:
    """(parameters, non-zero parameters, sparsity of the blocks' matrices) of a GGUF file."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))
    names = {tensor.name for tensor in reader.tensors}
    total = nonzero = block_values = block_zeros = 0
    for tensor in reader.tensors:
        if tensor.name == "output.weight" and "token_embd.weight" in names and _tied(reader):
            continue
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        count, zeros = int(values.size), int(values.size - np.count_nonzero(values))
        total, nonzero = total + count, nonzero + count - zeros
        if tensor.name.startswith("blk.") and len(tensor.shape) == 2:
            block_values, block_zeros = block_values + count, block_zeros + zeros
    return total, nonzero, (block_zeros / block_values if block_values else 0.0)


def _tied(reader) -> bool:
    """Whether the output layer is the token embedding written a second time (GPT-2's converter does so)."""
    import numpy as np

    tensors = {tensor.name: tensor for tensor in reader.tensors}
    output, embedding = tensors["output.weight"], tensors["token_embd.weight"]
    return (output.tensor_type == embedding.tensor_type and output.data.shape == embedding.data.shape
            and bool(np.array_equal(output.data, embedding.data)))
