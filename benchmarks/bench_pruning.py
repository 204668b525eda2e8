"""Pruning overhead and compacted speed, measured side by side (interleaved A, B, A, B ...).

    OMP_NUM_THREADS=1 python benchmarks/bench_pruning.py [--repeats 5] [--train-steps 12] [--part train|inference]

1. Training step time of MiniLM-shaped BERT (6 x 384, 12 heads, 1536 FFN) with and without
   MagnitudePruningCallback (cubic to 50% unstructured, global): steps that only keep the masks
   (every step) and steps that also compute new masks (a pruning event, 10 per run by default),
   then the overhead of a 1,000-step run with the default schedule.
2. Inference latency (batch 1) and throughput (batch 8) of all-MiniLM-L6-v2 dense, with 50%
   unstructured zeros (same dense kernels), and compacted after removing 50% of FFN neurons.
3. A SmolLM2-shaped Llama body (`LlamaModel`: 576 hidden, 9 heads / 3 KV heads, head_dim 64,
   1536 FFN, 6 layers; without the 49,152-word LM head, which no pruning here touches): dense vs
   compacted with 1 head per KV group removed, and with 50% of FFN neurons removed as well.
4. One FFN matmul with 50% unstructured zeros through torch's CSR sparse kernel vs dense.

Random weights are enough for timing (the real MiniLM weights are used when installed). Prints a
Markdown table of medians and ratios.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hf_bigsmall import MagnitudePruningCallback, compact
from hf_bigsmall.pruning.io import apply_masks, attach_masks
from hf_bigsmall.pruning.masks import structured_masks, targeted_weights, unstructured_masks

MINILM_SHAPE = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                    vocab_size=30522, num_labels=2)


class StepTimer(TrainerCallback):
    def __init__(self):
        self.durations = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.durations.append((state.global_step, time.perf_counter() - self._start))


class TimedPruningCallback(MagnitudePruningCallback):
    """Adds up the time spent inside the callback's hooks at each step: its own cost, measured in
    the same run as the step it belongs to, so load from other processes cannot bias the ratio."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.spent: dict[int, float] = {}

    def _timed(self, hook, args, state, control, **kwargs):
        start = time.perf_counter()
        result = hook(args, state, control, **kwargs)
        step = state.global_step if hook.__name__ == "on_step_end" else state.global_step + 1
        self.spent[step] = self.spent.get(step, 0.0) + time.perf_counter() - start
        return result

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        return self._timed(super().on_pre_optimizer_step, args, state, control, **kwargs)

    def on_optimizer_step(self, args, state, control, **kwargs):
        return self._timed(super().on_optimizer_step, args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        return self._timed(super().on_step_end, args, state, control, **kwargs)


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, size, seq_len, vocab_size):
        self.ids = torch.randint(1, vocab_size, (size, seq_len), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": int(self.ids[i][0]) % 2}


def train_step_times(with_pruning: bool, steps: int, output_dir: str) -> tuple[list, list]:
    """(step duration, time inside the pruning callback) of each step, split into (steps without a
    pruning event, steps with one)."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**MINILM_SHAPE))
    timer = StepTimer()
    callbacks = [timer]
    pruning = None
    if with_pruning:
        # events at every other step, so both kinds of step are measured in a short run
        pruning = TimedPruningCallback(target_sparsity=0.5, schedule="cubic", start_step=1, end_step=steps - 1,
                                       pruning_frequency=2)
        callbacks.insert(0, pruning)
    args = TrainingArguments(output_dir=output_dir, max_steps=steps, per_device_train_batch_size=8, report_to="none",
                             save_strategy="no", logging_steps=steps, use_cpu=True, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=RandomTokens(8 * steps, 64, 30522), callbacks=callbacks).train()
    measured = timer.durations[1:]  # the first step warms up kernels and allocators
    events = set(pruning.schedule.pruning_steps()) if pruning else set()
    spent = pruning.spent if pruning else {}
    rows = [(d, spent.get(s, 0.0)) for s, d in measured]
    return ([r for (s, _), r in zip(measured, rows) if s not in events],
            [r for (s, _), r in zip(measured, rows) if s in events])


def timed(fn, repeats: int) -> float:
    fn()
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def with_masks(model, masks):
    attach_masks(model, masks, {})
    apply_masks(model, masks)
    return model


def minilm_models():
    try:
        from hf_bigsmall.assets import minilm_path

        dense = BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
        source = "all-MiniLM-L6-v2 weights"
    except (FileNotFoundError, OSError):
        torch.manual_seed(0)
        dense = BertForSequenceClassification(BertConfig(**MINILM_SHAPE))
        source = "MiniLM shape, random weights"
    dense.eval()
    unstructured = copy.deepcopy(dense)
    with_masks(unstructured, unstructured_masks(targeted_weights(unstructured), 0.5))
    compacted = copy.deepcopy(dense)
    compact(with_masks(compacted, structured_masks(compacted, "neurons", 0.5)))
    return source, {"dense": dense, "unstructured 50% (dense kernels)": unstructured, "compacted, 50% FFN neurons": compacted}


def llama_models():
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=576, num_hidden_layers=6, num_attention_heads=9, num_key_value_heads=3,
                         head_dim=64, intermediate_size=1536, vocab_size=49152)
    dense = LlamaModel(config).eval()
    heads = copy.deepcopy(dense)
    compact(with_masks(heads, structured_masks(heads, "heads", 1 / 3)))
    both = copy.deepcopy(dense)
    masks = {**structured_masks(both, "heads", 1 / 3), **structured_masks(both, "neurons", 0.5)}
    compact(with_masks(both, masks))
    return {"dense": dense, "compacted, 3 of 9 heads": heads, "compacted, 3 of 9 heads + 50% FFN": both}


def compare_inference(models: dict, vocab: int, repeats: int, seq_len: int = 128, batch_size: int = 8) -> list[tuple]:
    single = {"input_ids": torch.randint(1, vocab, (1, seq_len))}
    batch = {"input_ids": torch.randint(1, vocab, (batch_size, seq_len))}
    latency = {name: [] for name in models}
    throughput = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(**single), model(**batch)  # warm-up
        for _ in range(3 * repeats):  # interleaved so that load from other processes hits every variant alike
            for name, model in models.items():
                start = time.perf_counter()
                model(**single)
                latency[name].append(time.perf_counter() - start)
                start = time.perf_counter()
                model(**batch)
                throughput[name].append(batch_size / (time.perf_counter() - start))
    base_latency = statistics.median(latency["dense"])
    base_throughput = statistics.median(throughput["dense"])
    rows = []
    for name, model in models.items():
        lat, thr = statistics.median(latency[name]), statistics.median(throughput[name])
        rows.append((name, f"{model.num_parameters() / 1e6:.2f} M", f"{lat * 1000:.1f} ms", f"{base_latency / lat:.2f}x",
                     f"{thr:.1f}/s", f"{thr / base_throughput:.2f}x"))
    return rows


def csr_matmul(repeats: int) -> tuple[float, float]:
    weight = torch.randn(1536, 384)
    weight[torch.rand_like(weight) < 0.5] = 0
    sparse = weight.to_sparse_csr()
    x = torch.randn(384, 8 * 128)
    dense_t, sparse_t = [], []
    for _ in range(repeats):
        dense_t.append(timed(lambda: weight @ x, 3))
        sparse_t.append(timed(lambda: sparse @ x, 3))
    return statistics.median(dense_t), statistics.median(sparse_t)


def train_overhead(args):
    plain, kept, events = [], [], []
    for _ in range(args.repeats):  # runs interleaved: without, with, without, with ...
        plain += [d for d, _ in train_step_times(False, args.train_steps, args.output_dir)[0]]
        steady, pruning_steps = train_step_times(True, args.train_steps, args.output_dir)
        kept += steady
        events += pruning_steps
    p = statistics.median(plain)
    k, e = statistics.median(d for d, _ in kept), statistics.median(d for d, _ in events)
    # the callback's own share of the steps it ran in (same run, so load cannot bias it)
    share_kept = statistics.median(c / (d - c) for d, c in kept)
    share_event = statistics.median(c / (d - c) for d, c in events)
    run = 1000  # default schedule: 10 pruning events in a run
    amortised = (share_kept * (run - 10) + share_event * 10) / run
    print("\n| training step (MiniLM shape, batch 8 x 64) | median step | time in the callback / rest of the step |")
    print("|---|---|---|")
    print(f"| without callback | {p * 1000:.0f} ms | - |")
    print(f"| with callback, masks kept (every step) | {k * 1000:.0f} ms ({k / p:.2f}x, separate runs) | {share_kept:+.2%} |")
    print(f"| with callback, pruning event (new masks) | {e * 1000:.0f} ms ({e / p:.2f}x, separate runs) | {share_event:+.2%} |")
    print(f"| 1,000-step run, default schedule (10 events) | | {amortised:+.2%} |")



def inference_speed(args):
    header = "| model | params | latency (1 x 128) | speed-up | throughput (8 x 128) | speed-up |\n|---|---|---|---|---|---|"
    source, minilm = minilm_models()
    print(f"\nMiniLM ({source})\n{header}")
    for row in compare_inference(minilm, 30522, args.repeats):
        print("| " + " | ".join(row) + " |")
    print(f"\nSmolLM2-shaped Llama body (LlamaModel), 6 layers, random weights\n{header}")
    for row in compare_inference(llama_models(), 49152, args.repeats):
        print("| " + " | ".join(row) + " |")

    dense_t, sparse_t = csr_matmul(args.repeats)
    print(f"\n1536 x 384 weight, 50% zeros, times 384 x 1024: dense {dense_t * 1000:.2f} ms, "
          f"CSR sparse {sparse_t * 1000:.2f} ms ({dense_t / sparse_t:.2f}x)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=12)
    parser.add_argument("--output-dir", default="/tmp/bench_pruning")
    parser.add_argument("--part", choices=["all", "train", "inference"], default="all")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.part in ("all", "train"):
        train_overhead(args)
    if args.part in ("all", "inference"):
        inference_speed(args)


if __name__ == "__main__":
    main()
