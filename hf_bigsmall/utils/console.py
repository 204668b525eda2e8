"""The command line's output: the one place where hf_bigsmall writes to the terminal.

Library code logs through `transformers.utils.logging`; what the `hf-bigsmall` command and its
quickstart tell the person running them (stages, the result table, where files went) goes
through `echo`, so it can be found, silenced or redirected in one place.
"""

from __future__ import annotations

import sys


def echo(message: object = "", *, error: bool = False) -> None:
    """Write one line for the person at the terminal (standard error with `error=True`), flushed at once."""
    print(message, file=sys.stderr if error else sys.stdout, flush=True)
