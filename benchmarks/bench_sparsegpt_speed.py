"""Cost of SparseGPT against Wanda on SmolLM2-135M, side by side in one run, and against an earlier revision.

    OMP_NUM_THREADS=1 python benchmarks/bench_sparsegpt_speed.py --before a6ce073 --calibration-samples 16

Each measurement runs in its own process, one after the other, in this order: Wanda 50% (one dense
pass), then for every `--before` revision and for the working tree, SparseGPT 50% with sequential
calibration (`--rounds` times, interleaved). All read the same `--calibration-samples` windows of
`--calibration-seq-len` tokens of the news train split. A revision's package is taken with
`git archive` into a temporary folder and imported from there.

Reported per run: the CPU seconds and wall seconds of the `prune_one_shot` call (on a shared machine
wall time mostly measures the other jobs; CPU seconds compare), the held-out perplexity on the first
`--eval-blocks` blocks of the news test split, and, between the SparseGPT runs, the share of equal
mask entries and the largest weight difference, so a faster revision is seen to prune the same way.

Results go to `--output` (JSON) and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(args) -> None:
    sys.path.insert(0, args.package_root)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_bigsmall
    from hf_bigsmall import assets, prune_one_shot
    from hf_bigsmall.pruning.calibration import prepare_calibration
    from hf_bigsmall.tasks.causal_lm import load_causal_lm_dataset

    path = assets.smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = load_causal_lm_dataset(tokenizer, assets.NEWS, block_size=512, max_eval_samples=args.eval_blocks)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    calibration = prepare_calibration(data["train"], args.calibration_samples, args.calibration_seq_len,
                                      batch_size=4, model=model)
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    prune_one_shot(model, calibration, sparsity=0.5, method=args.method, sequential=args.method == "sparsegpt")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    with torch.no_grad():
        nll, tokens = 0.0, 0
        for row in data["eval"]:
            input_ids = torch.tensor([row["input_ids"]])
            logits = model(input_ids=input_ids).logits[:, :-1]
            nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1), input_ids[0, 1:], reduction="sum").item()
            tokens += input_ids.shape[1] - 1
    if args.save:
        torch.save({name: value for name, value in model.state_dict().items() if name.endswith("proj.weight")},
                   args.save)
    print(json.dumps({"package": str(Path(hf_bigsmall.__file__).parent), "prune_cpu_seconds": round(cpu, 1),
                      "prune_seconds": round(wall, 1), "load": load, "perplexity": math.exp(nll / tokens)}))


def compare(first: str, second: str) -> dict:
    import torch

    a, b = torch.load(first), torch.load(second)
    equal = sum(int(((a[name] == 0) == (b[name] == 0)).sum()) for name in a)
    total = sum(a[name].numel() for name in a)
    largest = max(float((a[name] - b[name]).abs().max()) for name in a)
    return {"equal_mask_share": equal / total, "largest_weight_difference": largest}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", action="append", default=[], help="git revision to compare with (repeatable)")
    parser.add_argument("--calibration-samples", type=int, default=16)
    parser.add_argument("--calibration-seq-len", type=int, default=512)
    parser.add_argument("--eval-blocks", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--output", default="benchmarks/results/sparsegpt_speed.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--package-root", default=str(ROOT), help=argparse.SUPPRESS)
    parser.add_argument("--method", default="sparsegpt", help=argparse.SUPPRESS)
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    with tempfile.TemporaryDirectory() as folder:
        roots = {}
        for revision in args.before:
            target = Path(folder) / f"rev-{revision}"
            target.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "hf_bigsmall"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
            roots[revision] = str(target)
        roots["working tree"] = str(ROOT)
        plan = [("wanda", "working tree", 0)] + [("sparsegpt", name, round_) for round_ in range(args.rounds)
                                                 for name in roots]
        results = {"calibration": f"{args.calibration_samples} x {args.calibration_seq_len}",
                   "eval": f"{args.eval_blocks} x 512", "threads": os.environ.get("OMP_NUM_THREADS"),
                   "load_at_start": os.getloadavg(), "runs": []}
        for method, name, round_ in plan:
            save = str(Path(folder) / f"{method}-{name.replace(' ', '-')}-{round_}.pt")
            command = [sys.executable, __file__, "--child", "--package-root", roots[name], "--method", method,
                       "--save", save, "--calibration-samples", str(args.calibration_samples),
                       "--calibration-seq-len", str(args.calibration_seq_len), "--eval-blocks", str(args.eval_blocks)]
            environment = {**os.environ, "PYTHONPATH": roots[name]}
            output = subprocess.run(command, check=True, capture_output=True, text=True, env=environment, cwd=folder)
            entry = {"method": method, "code": name, "round": round_, "weights": save,
                     **json.loads(output.stdout.strip().splitlines()[-1])}
            results["runs"].append(entry)
            print(json.dumps(entry), flush=True)
        wanda = results["runs"][0]
        current = [run for run in results["runs"] if run["method"] == "sparsegpt" and run["code"] == "working tree"]
        for run in results["runs"][1:]:
            run["cpu_over_wanda"] = run["prune_cpu_seconds"] / wanda["prune_cpu_seconds"]
            if run["code"] != "working tree":
                run.update(compare(run["weights"], current[0]["weights"]))
        for run in results["runs"]:
            run.pop("weights")
        results["load_at_end"] = os.getloadavg()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    rows = ["| Method | Code | CPU s | Wall s | CPU x Wanda | Held-out ppl | Masks equal to the working tree's |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for run in results["runs"]:
        equal = run.get("equal_mask_share")
        rows.append(f"| {run['method']} | {run['code']} | {run['prune_cpu_seconds']} | {run['prune_seconds']} | "
                    f"{run.get('cpu_over_wanda', 1.0):.2f} | {run['perplexity']:.2f} | "
                    f"{'-' if equal is None else f'{equal:.4%}'} |")
    print("\n".join(rows))
    return results


if __name__ == "__main__":
    main()
