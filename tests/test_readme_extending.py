"""The README's "Extending hf_bigsmall" examples run as written, each in a fresh interpreter."""

import re
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT

SECTION = "## Extending hf_bigsmall"
AXES = ("A custom divergence", "A custom pruning criterion", "A custom quantization backend")


def _section(text: str, heading: str, level: str) -> str:
    start = text.index(f"{level} {heading}\n")
    rest = text[start + len(level) + len(heading) + 2:]
    end = re.search(rf"^#{{1,{len(level)}}} ", rest, flags=re.MULTILINE)
    return rest[: end.start()] if end else rest


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_section_has_one_example_per_axis():
    section = _section((REPO_ROOT / "README.md").read_text(encoding="utf-8"), SECTION[3:], "##")
    for axis in AXES:
        assert _python_blocks(_section(section, axis, "###")), f"README: no python example under '### {axis}'"


@pytest.mark.parametrize("axis", AXES)
def test_readme_example_runs_as_written(axis, tmp_path):
    section = _section((REPO_ROOT / "README.md").read_text(encoding="utf-8"), SECTION[3:], "##")
    blocks = _python_blocks(_section(section, axis, "###"))
    if not blocks:
        pytest.fail(f"README: no python example under '### {axis}'")
    script = tmp_path / "example.py"
    script.write_text("\n".join(blocks), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"the README's '{axis}' example failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
