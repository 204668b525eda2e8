"""Small pieces of model-card Markdown that every step's record uses: model names fit for the Hub, settings tables.

A card goes to the Hub: a path on the machine that wrote it means nothing there and tells strangers
about that machine, so names are written as Hub ids, embedded asset names, or a folder's last part.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Offline assets are published on the Hub under these ids: the card's `base_model` must name a Hub repo.
EMBEDDED_HUB_IDS = {
    "embedded/all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "embedded/SmolLM2-135M": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "embedded/rotten_tomatoes": "cornell-movie-review-data/rotten_tomatoes",
}


def hub_id(name: str | None) -> str | None:
    """The Hub id for a model or dataset name, or None when it is a local path with no Hub id."""
    if not name:
        return None
    if name.startswith("embedded/") and name not in EMBEDDED_HUB_IDS:
        return None  # an offline asset with no published copy on the Hub (e.g. embedded/hamlet)
    name = EMBEDDED_HUB_IDS.get(name, name)
    if os.path.exists(name) or not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", name) or name.startswith((".", "/")):
        return None
    return name


def public_name(name: Any) -> Any:
    """What a card may call a model it names: its Hub id, an embedded name, or a local folder's last part.

    A card goes to the Hub: a path on the machine that wrote it (`/home/me/out/teacher`) means nothing
    there and tells strangers about that machine, so only the folder's own name is kept.
    """
    if not isinstance(name, str) or not name:
        return name
    public = hub_id(name)
    if public is not None or name.startswith("embedded/"):
        return public or name
    if os.path.exists(name) or name.startswith(("/", ".", "~")) or os.sep in name or name.count("/") > 1:
        return Path(name).name
    return name


def describe_model(name: str) -> str:
    """`the local model `teacher`` for a folder, `` `org/name` `` for a Hub id."""
    public = public_name(name)
    return f"`{public}`" if public == name or hub_id(name) else f"the local model `{public}`"


def _value(value: Any) -> str:
    return f"`{value:.4g}`" if isinstance(value, float) else f"`{value}`"


def settings_table(rows: Iterable[tuple[str, Any]]) -> list[str]:
    """A two-column Markdown table of settings; unset (None) settings are left out, local paths cut to their name."""
    lines = ["| | |", "| --- | --- |"]
    return lines + [f"| {key.replace('_', ' ')} | {_value(public_name(value))} |" for key, value in rows
                    if value is not None]
