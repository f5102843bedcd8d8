"""Every ```python block of README.md runs, so the README cannot drift from the code.

Oracle: the blocks assert their own claims (``torch.testing.assert_close`` against formulas
written out in the block); a block that raises fails here. Each block runs on its own.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[tuple[int, str]]:
    """(first line number of the code, code) for each ```python block."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in BLOCK.finditer(text)]


BLOCKS = python_blocks()


def test_readme_has_python_blocks() -> None:
    assert BLOCKS, f"no ```python block found in {README}"


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_block_runs(line: int, code: str) -> None:
    # Pad with newlines so a traceback's line numbers are the README's own.
    exec(compile("\n" * (line - 1) + code, str(README), "exec"), {"__name__": "__readme__"})
