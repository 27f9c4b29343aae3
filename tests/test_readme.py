"""The README's and the docs' Python examples run as written.

Every fenced block whose info string is exactly ``python`` in README.md and docs/**/*.md is run
in a fresh interpreter (from an empty directory, so nothing but the installed package is
importable). A block that is meant as an excerpt and cannot run alone is fenced ``python
no-run`` instead; there is none today.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for path in DOCUMENTS:
        text = path.read_text()
        for number, match in enumerate(FENCE.finditer(text), start=1):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{path.relative_to(ROOT)}:{line} (block {number})", match.group(1)))
    return found


BLOCKS = _blocks()


def test_the_readme_has_runnable_examples() -> None:
    readme = [name for name, _ in BLOCKS if name.startswith("README.md")]
    assert len(readme) >= 3
    # The ten-line promise: the first README example averages a state_dict in <= 10 statements.
    first = next(code for name, code in BLOCKS if name.startswith("README.md"))
    statements = [ln for ln in first.splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(statements) <= 10 and "state_dict" in first and "dropouts" in first


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_example_runs(where: str, code: str, tmp_path: Path) -> None:
    if "torch" in code:
        pytest.importorskip("torch")
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (
        f"{where} failed (an excerpt that cannot run alone is fenced ```python no-run):\n"
        f"{done.stderr[-3000:]}"
    )
