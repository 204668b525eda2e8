#!/usr/bin/env bash
# The GPU checklist in one command, on a machine with one CUDA GPU and the project installed with the
# extras the checks use (pip install -e ".[test,energy,liger]" torchao), from the repository root:
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]          # about 3-6 minutes; the limit is 8
#   bash benchmarks/gpu_check.sh --no-cuda [RESULTS_DIR] # checks the script on a CPU machine: the
#                                                       # GPU tests must then all skip, with a reason
#
# What it runs (each a pytest selection, so a failure shows the test's own message):
#   1. every test marked `gpu`: bf16 distillation on the GPU (test_distillation), masks exact under
#      bf16/fp16 (test_pruning_callback), bf16 distillation with pruning and energy through
#      accelerate's single-GPU config and through its FSDP2 config (test_gpu), NVML energy
#      (test_energy_backends), torchao int8/int4 save and reload (test_quantization), Liger-Kernel's
#      fused loss against the built-in one on CUDA (test_liger_loss);
#   2. the kit under torch's own FSDP2 on two CPU processes (test_fsdp2), which needs no GPU;
#   3. with --no-cuda only: the GPU tests' script run alone on the CPU, to check the script itself.
# RESULTS_DIR (default gpu-check-<date>) receives versions.txt, nvidia-smi.txt, one log and one JUnit
# XML per step, and summary.txt with a PASS/FAIL/SKIP line per test. On a GPU machine a skipped test
# counts against the verdict: the check it stands for did not run (install what its reason names).
set -u -o pipefail

no_cuda=0
if [[ "${1:-}" == "--no-cuda" ]]; then
    no_cuda=1
    shift
fi
results="${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$results"
results="$(cd "$results" && pwd)"
rm -f "$results/extra.txt" "$results/summary.txt"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
started=$SECONDS

python - >"$results/versions.txt" 2>&1 <<'EOF'
import importlib, platform, torch
print("python", platform.python_version())
for name in ("torch", "transformers", "accelerate", "datasets", "torchao", "pynvml", "liger_kernel", "hf_bigsmall"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "installed"))
    except ImportError:
        print(name, "NOT INSTALLED")
print("cuda", torch.cuda.is_available(), torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
EOF
nvidia-smi >"$results/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not available" >"$results/nvidia-smi.txt"
cat "$results/versions.txt"

if [[ $no_cuda == 0 ]] && ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "FAIL: no CUDA device visible to torch (see $results/versions.txt); use --no-cuda to check the script alone"
    echo "FAIL no CUDA device" >"$results/summary.txt"
    exit 1
fi

# step NAME TIMEOUT_S PYTEST_ARGS...: one pytest run, its log and JUnit XML in RESULTS_DIR
step() {
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" python -m pytest -p no:cacheprovider -o addopts="" -q -rA \
        --junitxml="$results/$name.xml" "$@" >"$results/$name.log" 2>&1
    local status=$?
    tail -n 3 "$results/$name.log"
    if [[ $status == 124 || $status == 137 ]]; then
        echo "FAIL $name: ran past ${limit}s" >>"$results/extra.txt"
    fi
}

step gpu-tests 300 -m gpu tests
step fsdp2-cpu 120 -m multiprocess tests/test_fsdp2.py
if [[ $no_cuda == 1 ]]; then
    # the GPU tests' script, run alone on the CPU (fp32, no FSDP): it must train, prune and save
    echo "== gpu-script-on-cpu"
    if timeout 180 python tests/scripts/gpu_distil_prune.py "$results/cpu-run" >"$results/gpu-script-on-cpu.log" 2>&1 \
        && python -c "import json, sys; sys.exit(json.load(open(sys.argv[1]))['masked_nonzero'] != 0)" \
            "$results/cpu-run/result.json"; then
        echo "PASS tests/scripts/gpu_distil_prune.py on the CPU" >>"$results/extra.txt"
    else
        echo "FAIL tests/scripts/gpu_distil_prune.py on the CPU (see gpu-script-on-cpu.log)" >>"$results/extra.txt"
    fi
fi

python - "$results" "$no_cuda" $((SECONDS - started)) <<'EOF'
import sys, xml.etree.ElementTree as ET
from pathlib import Path

results, no_cuda, elapsed = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
lines, failed, skipped = [], 0, 0
for step in ("gpu-tests", "fsdp2-cpu"):
    path = results / f"{step}.xml"
    if not path.is_file():
        lines.append(f"FAIL {step}: no results (see {step}.log)")
        failed += 1
        continue
    for case in ET.parse(path).iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            lines.append(f"FAIL {name}")
            failed += 1
        elif case.find("skipped") is not None:
            reason = (case.find("skipped").get("message") or "").strip()
            lines.append(f"SKIP {name}: {reason}")
            skipped += 1
        else:
            lines.append(f"PASS {name} ({float(case.get('time', 0)):.1f}s)")
extra = results / "extra.txt"  # steps outside pytest, and timeouts
if extra.is_file():
    for line in extra.read_text().splitlines():
        lines.append(line)
        failed += line.startswith("FAIL")
if elapsed > 480:
    lines.append(f"FAIL the checklist took {elapsed}s, over its 8-minute budget")
    failed += 1
ok = failed == 0 and (no_cuda or skipped == 0)
verdict = "PASS" if ok else "FAIL"
mode = "CPU only (--no-cuda): GPU tests are expected to skip" if no_cuda else "GPU"
lines.append(f"{verdict}: {failed} failed, {skipped} skipped, {elapsed}s, {mode}")
(results / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"results: {results}")
sys.exit(0 if ok else 1)
EOF
