"""Data and teacher preparation shared by the recipes and the quickstart, one module per task."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..pruning.config import SCHEDULES, STRUCTURES


@dataclass
class CompressionArguments:
    """Recipe options shared by every task: prune while distilling, compact, measure energy.

    A recipe's own `ScriptArguments` subclass this, so `--target_sparsity 0.5 --pruning_structure
    neurons --compact` works on any of them, from the command line or a YAML file.
    """

    target_sparsity: float | None = field(default=None, metadata={
        "help": "Prune the student by weight magnitude while it is distilled, to this fraction of its block "
                "weights (unset: no pruning)."})
    pruning_structure: str = field(default="unstructured", metadata={
        "help": f"What is pruned: {', '.join(STRUCTURES)} (single weights, whole FFN neurons, attention heads), or an "
                "N:M pattern such as 2:4 (N weights pruned in every M consecutive inputs; the target is then N/M)."})
    pruning_schedule: str = field(default="cubic", metadata={
        "help": "How sparsity grows during training.", "choices": list(SCHEDULES)})
    compact: bool = field(default=False, metadata={
        "help": "Also save <output_dir>/compact: the pruned student with its pruned neurons (and Llama heads) "
                "physically removed, loadable with plain from_pretrained. Needs structured pruning; heads only on "
                "Llama-style models (BERT and GPT-2 configs cannot describe fewer heads: refused before training)."})
    measure_energy: bool = field(default=True, metadata={
        "help": "Measure the energy and CO2 of training and evaluation with EnergyCallback (logs, energy.json, "
                "co2_eq_emissions in the model card)."})
    country_iso_code: str | None = field(default=None, metadata={
        "help": "ISO 3166-1 alpha-3 country for the grid's carbon intensity (default: world average)."})

    def __post_init__(self):
        if self.target_sparsity is not None:  # the pruning config's own checks, before anything is written
            from ..pruning.config import PruningConfig

            PruningConfig(target_sparsity=self.target_sparsity, schedule=self.pruning_schedule,
                          structure=self.pruning_structure)
        elif self.pruning_structure not in STRUCTURES and ":" not in self.pruning_structure:
            raise ValueError(f"--pruning_structure must be one of {STRUCTURES} or an N:M pattern such as 2:4, "
                             f"got {self.pruning_structure!r}.")
        if self.compact and (self.target_sparsity is None or self.pruning_structure not in ("neurons", "heads")):
            raise ValueError("--compact removes pruned neurons or heads: also pass --target_sparsity and "
                             "--pruning_structure neurons (or heads); unstructured and N:M zeros stay in the matrices.")

    def check_teacher(self, teacher_name_or_path: str) -> None:
        """Refuse, before any training, options this teacher's architecture cannot honour.

        `--compact` with `--pruning_structure heads` needs a config that states its head size (Llama
        style): BERT and GPT-2 derive it from `hidden_size / num_heads`, so their pruned heads can only
        stay as zeros and there would be nothing to compact after the whole run.
        """
        if not (self.compact and self.target_sparsity is not None and self.pruning_structure == "heads"):
            return
        from transformers import AutoConfig

        from ..assets import resolve_model
        from ..pruning.compact import heads_can_be_removed

        config = AutoConfig.from_pretrained(resolve_model(teacher_name_or_path))
        if not heads_can_be_removed(config):
            raise ValueError(
                f"--compact cannot remove attention heads from a {config.model_type} model: its config derives the "
                "head size from hidden_size / num_heads, so pruned heads stay in place as zeros. Use "
                "--pruning_structure neurons to get a smaller model, or drop --compact to keep the heads pruned as "
                "zeros (Llama-style models, with an explicit head_dim, can compact heads)."
            )

    def callbacks(self) -> list:
        """The callbacks these options ask for, to pass as `Trainer(callbacks=...)`."""
        from ..energy.callback import EnergyCallback
        from ..pruning.callback import MagnitudePruningCallback

        callbacks: list = []
        if self.measure_energy:
            callbacks.append(EnergyCallback(country_iso_code=self.country_iso_code))
        if self.target_sparsity is not None:
            callbacks.append(MagnitudePruningCallback(
                target_sparsity=self.target_sparsity, schedule=self.pruning_schedule, structure=self.pruning_structure))
        return callbacks

    def save_compacted(self, trainer, dataset: str | None = None) -> Path | None:
        """With `compact`, save the compacted copy of the trained student, with its card, in `<output_dir>/compact`."""
        if not self.compact or not trainer.is_world_process_zero():
            return None
        from ..hub.card import build_model_card
        from ..pruning.compact import compact
        from ..reporting.compare import load_model

        output_dir = Path(trainer.args.output_dir)
        compacted = compact(load_model(output_dir))  # the student as saved, without the trainer's hooks
        target = output_dir / "compact"
        compacted.save_pretrained(target)
        if trainer.processing_class is not None:
            trainer.processing_class.save_pretrained(target)
        build_model_card(target, dataset=dataset).save(target / "README.md")
        return target


def parse_recipe_args(script_arguments_class: type, defaults: dict[str, Any], argv: list[str] | None = None):
    """Parse `(script_arguments_class, DistillationConfig)` from one YAML file or the command line.

    `defaults` replace `DistillationConfig`'s own on the command line (a recipe's sensible values,
    e.g. its `output_dir`); a YAML file states every value itself.
    """
    from transformers import HfArgumentParser

    from ..distillation.config import DistillationConfig

    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((script_arguments_class, DistillationConfig))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0])
    parser.set_defaults(**defaults)
    return parser.parse_args_into_dataclasses(argv)
