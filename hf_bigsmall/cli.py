"""The `hf-bigsmall` command: `quickstart`, `compare`, `push` and `quantize`.

```bash
hf-bigsmall quickstart --fast                      # teacher -> student -> pruned -> compact, measured
hf-bigsmall quickstart --task causal-lm            # SmolLM2 pruned by importance, healed by distillation
hf-bigsmall compare out/teacher out/student --output_dir out
hf-bigsmall push out/student me/minilm-rt-student
hf-bigsmall quantize out/student-compact out/student-int8     # int8 for the CPU (ONNX Runtime)
hf-bigsmall quantize out/student out/student-int4 --backend onnxruntime-genai --method int4 \
    --calibration_dataset embedded/news                        # GPTQ-calibrated int4 for ONNX Runtime GenAI
```
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterable

from .quantization.backends import quantization_backends
from .utils.console import echo

# the quickstart's pipelines; `--task` also takes them with underscores (causal_lm)
QUICKSTART_TASKS = ("text-classification", "causal-lm")
# `quantize --calibration_dataset`'s blocks of 128 tokens when `--calibration_samples` is not given
DEFAULT_CALIBRATION_SAMPLES = 32


def _compare(args: argparse.Namespace) -> int:
    from .reporting.compare import compare_models

    comparison = compare_models(
        args.model_dirs, args.dataset, split=args.split, text_column=args.text_column, label_column=args.label_column,
        max_samples=args.max_samples or None, max_length=args.max_length, batch_size=args.batch_size,
        latency_samples=args.latency_samples, output_dir=args.output_dir, plots=not args.no_plots,
    )
    from .reporting.report import markdown_table, perplexity_lines, timing_lines

    echo("\n".join([markdown_table(comparison.to_dict()), *timing_lines(comparison.to_dict())]))
    echo("\n".join(perplexity_lines(comparison.to_dict())))
    from .utils.import_utils import is_matplotlib_available

    drawn = ", plots" if not args.no_plots and is_matplotlib_available() else ""
    echo(f"\nReport written to {args.output_dir}/report.md (and report.json{drawn}).")
    return 0


def _push(args: argparse.Namespace) -> int:
    from .hub.push import HubUploadError, push_folder

    try:
        commit = push_folder(args.model_dir, args.repo_id, token=args.token, private=args.private or None,
                             revision=args.revision, commit_message=args.commit_message, write_card=not args.no_card)
    except HubUploadError as error:
        echo(error, error=True)
        return 1
    echo(f"Uploaded {args.model_dir} to {commit.commit_url}")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    import json

    from .quantization import get_quantization_backend, quantize
    from .quantization.config import quantization_of

    # checked before anything is read: a sample count given alone would otherwise be silently unused
    if args.calibration_samples is not None and not args.calibration_dataset:
        raise ValueError(f"--calibration_samples {args.calibration_samples} needs --calibration_dataset: "
                         "add the corpus to calibrate on (e.g. --calibration_dataset embedded/news), or drop "
                         "--calibration_samples for uncalibrated quantization.")
    samples = DEFAULT_CALIBRATION_SAMPLES if args.calibration_samples is None else args.calibration_samples
    if samples < 1:
        raise ValueError(f"--calibration_samples must be >= 1, got {samples}: give a positive count with "
                         f"--calibration_dataset embedded/news (default {DEFAULT_CALIBRATION_SAMPLES}).")
    calibration = None
    if args.calibration_dataset:  # refused for a backend that takes none before the corpus is read
        from .quantization import plan_quantization
        from .quantization.gptq import calibration_blocks

        plan_quantization(args.method, args.device, args.backend).check_calibration()
        calibration = calibration_blocks(args.model_dir, args.calibration_dataset, samples)
    try:
        folder = quantize(args.model_dir, args.output_dir, method=args.method, device=args.device,
                          backend=args.backend, calibration=calibration)
    except ImportError as error:  # the backend's extra is missing: the message says what to install
        echo(f"hf-bigsmall quantize: {error}", error=True)
        return 2
    record = quantization_of(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    usage = get_quantization_backend(record["backend"]).load_instructions(
        folder, record, architecture=(config.get("architectures") or [None])[0])
    echo(f"Quantized {args.model_dir} -> {folder}\nLoad it with: {usage}")
    return 0


def _quickstart_task(argv: list[str]) -> tuple[str, list[str]]:
    """The quickstart's `--task` (default text-classification), written with a dash, and `argv` with it so written.

    Raises:
        ValueError: the task is none of `QUICKSTART_TASKS`; the message names them and the closest.
    """
    task, argv = "text-classification", list(argv)
    for index, argument in enumerate(argv):
        if argument == "--task" and index + 1 < len(argv):
            task = argv[index + 1] = argv[index + 1].replace("_", "-")
        elif argument.startswith("--task="):
            task = argument.split("=", 1)[1].replace("_", "-")
            argv[index] = f"--task={task}"
    if task not in QUICKSTART_TASKS:
        close = difflib.get_close_matches(task, QUICKSTART_TASKS, n=1)
        raise ValueError(f"--task {task!r} is not a quickstart task: choose "
                         + " or ".join(QUICKSTART_TASKS) + (f" (did you mean {close[0]!r}?)" if close else "") + ".")
    return task, argv


def _suggestions(unknown: Iterable[str], options: Iterable[str]) -> str:
    """`--modle: did you mean --model?` for each unknown flag, from the parser's own option strings."""
    options = [option for option in options if option.startswith("--")]
    lines = []
    for argument in unknown:
        flag = argument.split("=", 1)[0]
        if not flag.startswith("-"):
            continue
        close = difflib.get_close_matches(flag, options, n=1, cutoff=0.6)
        lines.append(f"{flag}: did you mean {close[0]}?" if close else f"{flag}: no such option")
    return "; ".join(lines)


def _plain_help(parser: argparse.ArgumentParser) -> None:
    """Make the dataclass help texts safe for argparse and give each `--no_x` switch its own help.

    argparse formats help with `%`, so a `10%` in a field's help crashed `--help`; and HfArgumentParser
    gives `--no_x` a copy of `--x`'s help, which says the opposite of what the switch does.
    """
    for action in parser._actions:
        if action.help and "%(" not in action.help:
            action.help = action.help.replace("%", "%%")
        negative = [option for option in action.option_strings if option.startswith("--no_")]
        if negative and isinstance(action, argparse._StoreFalseAction):
            action.help = f"Turn --{action.dest} off (it is on by default)."


def _parse_quickstart(parser, argv: list[str]):
    _plain_help(parser)
    arguments, unknown = parser.parse_known_args(argv)
    if unknown:
        options = [option for action in parser._actions for option in action.option_strings]
        raise ValueError(f"unrecognized arguments {unknown}: {_suggestions(unknown, options)} (see --help).")
    (dataclass_arguments,) = parser.parse_args_into_dataclasses(argv)
    return dataclass_arguments


def _quickstart(argv: list[str]) -> int:
    from transformers import HfArgumentParser

    task, argv = _quickstart_task(argv)
    if task == "causal-lm":
        from .quickstart_causal_lm import CausalLMQuickstartArguments, run_causal_lm_quickstart

        parser = HfArgumentParser(CausalLMQuickstartArguments, prog="hf-bigsmall quickstart --task causal-lm",
                                  description="Prune an LLM by importance, heal it by distillation, and compare.")
        run_causal_lm_quickstart(_parse_quickstart(parser, argv))
        return 0
    from .quickstart import QuickstartArguments, run_quickstart

    parser = HfArgumentParser(QuickstartArguments, prog="hf-bigsmall quickstart",
                              description="Fine-tune a teacher, distill, prune and compact a student, and compare "
                                          "them. `--task causal-lm --help` lists the LLM pipeline's options.")
    run_quickstart(_parse_quickstart(parser, argv))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-bigsmall", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("quickstart", help="the whole big -> small pipeline on an embedded default: --task "
                        "text-classification (default) or causal-lm (see quickstart --help)", add_help=False)

    compare = commands.add_parser("compare", help="measure saved models side by side; the first is the reference")
    compare.add_argument("model_dirs", nargs="+", help="saved model folders, the teacher first")
    compare.add_argument("--dataset", default=None,
                         help="dataset name (embedded/rotten_tomatoes, embedded/hamlet or a Hub id); "
                              "defaults to the embedded one for the models' task")
    compare.add_argument("--split", default="test")
    compare.add_argument("--text_column", default="text")
    compare.add_argument("--label_column", default="label")
    compare.add_argument("--max_samples", type=int, default=500, help="0 for the whole split")
    compare.add_argument("--max_length", type=int, default=128)
    compare.add_argument("--batch_size", type=int, default=32, help="batch size of the throughput pass")
    compare.add_argument("--latency_samples", type=int, default=20)
    compare.add_argument("--output_dir", default="bigsmall_report")
    compare.add_argument("--no_plots", action="store_true")
    compare.set_defaults(handler=_compare)

    push = commands.add_parser("push", help="upload a model folder (weights, tokenizer, card, masks, report)")
    push.add_argument("model_dir")
    push.add_argument("repo_id")
    push.add_argument("--token", default=None)
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision", default=None)
    push.add_argument("--commit_message", default=None)
    push.add_argument("--no_card", action="store_true", help="do not write a README.md card when there is none")
    push.set_defaults(handler=_push)

    quantize = commands.add_parser("quantize", help="int8 for the CPU (ONNX Runtime), int8/int4 for CUDA (torchao)")
    quantize.add_argument("model_dir", help="a saved classifier or causal LM, with its tokenizer")
    quantize.add_argument("output_dir", help="the new folder")
    backends = quantization_backends()  # the choices are the registry's: a backend registered in code is offered too
    methods = list(dict.fromkeys(method for backend in backends for method in backend.methods))
    devices = list(dict.fromkeys(device for backend in backends for device in backend.devices))
    quantize.add_argument("--method", default="int8", choices=methods,
                          help="int8/int4 (fp32 for onnxruntime-genai); with --backend gguf also a GGUF type "
                               "(f32 ... q4_k_m); any method a registered backend offers")
    quantize.add_argument("--device", default="cpu", choices=devices,
                          help="where the model will run")
    quantize.add_argument("--backend", default="auto", choices=["auto", *(b.name for b in backends)],
                          help="a registered quantization backend; gguf: one GGUF file for llama.cpp / Ollama "
                               "(Llama-family and GPT-2 causal LMs)")
    calibrated = ", ".join(f"{b.name} {'/'.join(b.calibrated_schemes)}" for b in backends if b.calibrated_schemes)
    quantize.add_argument("--calibration_dataset", default=None,
                          help="calibrate on 128-token blocks of this corpus's training split (embedded/news, "
                               f"embedded/hamlet, a Hub id or a path): GPTQ for {calibrated}")
    quantize.add_argument("--calibration_samples", type=int, default=None,
                          help="calibration blocks of 128 tokens with --calibration_dataset "
                               f"(default {DEFAULT_CALIBRATION_SAMPLES})")
    quantize.set_defaults(handler=_quantize)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quickstart = bool(argv) and argv[0] == "quickstart"
    args = None
    if not quickstart:
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # argparse's own message, with the closest option of that command
            command = parser._subparsers._group_actions[0].choices[args.command]
            command.error(f"unrecognized arguments: {' '.join(unknown)} "
                          f"({_suggestions(unknown, command._option_string_actions)})")
    try:
        # quickstart's options come from a dataclass, read by HfArgumentParser
        return _quickstart(argv[1:]) if quickstart else args.handler(args)
    except (ValueError, OSError) as error:  # bad input or unreachable data: say what, without a traceback
        echo(f"hf-bigsmall {argv[0] if quickstart else args.command}: {error}", error=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
