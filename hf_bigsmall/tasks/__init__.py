"""Data and teacher preparation shared by the recipes and the quickstart, one module per task."""

from __future__ import annotations

import sys
from typing import Any


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
