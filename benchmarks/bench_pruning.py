"""Pruning overhead and compacted speed, measured side by side (interleaved A, B, A, B ...).

    OMP_NUM_THREADS=2 python benchmarks/bench_pruning.py [--repeats 5] [--train-steps 12]

1. Training step time of MiniLM-shaped BERT (6 x 384, 12 heads, 1536 FFN) with and without
   MagnitudePruningCallback (cubic to 50% unstructured, global): steps that only keep the masks
   (every step) and steps that also compute new masks (a pruning event, 10 per run by default),
   then the overhead of a 1,000-step run with the default schedule.
2. Inference latency (batch 1) and throughput (batch 32) of all-MiniLM-L6-v2 dense, with 50%
   unstructured zeros (same dense kernels), and compacted after removing 50% of FFN neurons.
3. A SmolLM2-shaped Llama (576 hidden, 9 heads / 3 KV heads, head_dim 64, 1536 FFN, 6 layers):
   dense vs compacted with 1 head per KV group and 50% of FFN neurons removed.
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
    LlamaForCausalLM,
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


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, size, seq_len, vocab_size):
        self.ids = torch.randint(1, vocab_size, (size, seq_len), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": int(self.ids[i][0]) % 2}


def train_step_times(with_pruning: bool, steps: int, output_dir: str) -> tuple[list[float], list[float]]:
    """Step durations split into (steps without a pruning event, steps with one)."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**MINILM_SHAPE))
    timer = StepTimer()
    callbacks = [timer]
    pruning = None
    if with_pruning:
        # events at every other step, so both kinds of step are measured in a short run
        pruning = MagnitudePruningCallback(target_sparsity=0.5, schedule="cubic", start_step=1, end_step=steps - 1,
                                           pruning_frequency=2)
        callbacks.insert(0, pruning)
    args = TrainingArguments(output_dir=output_dir, max_steps=steps, per_device_train_batch_size=8, report_to="none",
                             save_strategy="no", logging_steps=steps, use_cpu=True, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=RandomTokens(8 * steps, 64, 30522), callbacks=callbacks).train()
    measured = timer.durations[1:]  # the first step warms up kernels and allocators
    events = set(pruning.schedule.pruning_steps()) if pruning else set()
    return [d for s, d in measured if s not in events], [d for s, d in measured if s in events]


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
    dense = LlamaForCausalLM(config).eval()
    heads = copy.deepcopy(dense)
    compact(with_masks(heads, structured_masks(heads, "heads", 1 / 3)))
    both = copy.deepcopy(dense)
    masks = {**structured_masks(both, "heads", 1 / 3), **structured_masks(both, "neurons", 0.5)}
    compact(with_masks(both, masks))
    return {"dense": dense, "compacted, 3 of 9 heads": heads, "compacted, 3 of 9 heads + 50% FFN": both}


def compare_inference(models: dict, vocab: int, repeats: int, seq_len: int = 128) -> list[tuple]:
    single = {"input_ids": torch.randint(1, vocab, (1, seq_len))}
    batch = {"input_ids": torch.randint(1, vocab, (32, seq_len))}
    latency = {name: [] for name in models}
    throughput = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(repeats):  # interleaved so that load from other processes hits every variant alike
            for name, model in models.items():
                latency[name].append(timed(lambda: model(**single), 3))
                throughput[name].append(32 / timed(lambda: model(**batch), 1))
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
    x = torch.randn(384, 32 * 128)
    dense_t, sparse_t = [], []
    for _ in range(repeats):
        dense_t.append(timed(lambda: weight @ x, 3))
        sparse_t.append(timed(lambda: sparse @ x, 3))
    return statistics.median(dense_t), statistics.median(sparse_t)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=12)
    parser.add_argument("--output-dir", default="/tmp/bench_pruning")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    plain, kept, events = [], [], []
    for _ in range(args.repeats):
        plain += train_step_times(False, args.train_steps, args.output_dir)[0]
        steady, pruning_steps = train_step_times(True, args.train_steps, args.output_dir)
        kept += steady
        events += pruning_steps
    p, k, e = statistics.median(plain), statistics.median(kept), statistics.median(events)
    run = 1000  # default schedule: 10 pruning events in a run
    amortised = (k * (run - 10) + e * 10) / (p * run)
    print("\n| training step (MiniLM shape, batch 8 x 64) | median | vs no callback |")
    print("|---|---|---|")
    print(f"| without callback | {p * 1000:.0f} ms | 1.00x |")
    print(f"| with callback, masks kept (every step) | {k * 1000:.0f} ms | {k / p:.3f}x |")
    print(f"| with callback, pruning event (new masks) | {e * 1000:.0f} ms | {e / p:.3f}x |")
    print(f"| 1,000-step run, default schedule (10 events) | | {amortised:.3f}x ({100 * (amortised - 1):+.1f}%) |")

    header = "| model | params | latency (1 x 128) | speed-up | throughput (32 x 128) | speed-up |\n|---|---|---|---|---|---|"
    source, minilm = minilm_models()
    print(f"\nMiniLM ({source})\n{header}")
    for row in compare_inference(minilm, 30522, args.repeats):
        print("| " + " | ".join(row) + " |")
    print(f"\nSmolLM2-shaped Llama, 6 layers, random weights\n{header}")
    for row in compare_inference(llama_models(), 49152, args.repeats):
        print("| " + " | ".join(row) + " |")

    dense_t, sparse_t = csr_matmul(args.repeats)
    print(f"\n1536 x 384 weight, 50% zeros, times 384 x 4096: dense {dense_t * 1000:.2f} ms, "
          f"CSR sparse {sparse_t * 1000:.2f} ms ({dense_t / sparse_t:.2f}x)")


if __name__ == "__main__":
    main()
