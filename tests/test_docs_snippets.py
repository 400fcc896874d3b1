"""Every ``python`` code block of the README and the docs runs as written.

Each block is run on its own, in a fresh namespace and a temporary working
directory, with the Redis URL in it pointed at the test suite's private server.
A block that is a script runs as ``__main__``; a block that is a bot (it polls
only under ``if __name__ == "__main__"``) is run as a module and its ``dp`` is fed
messages over a local Bot API server, and must answer every one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.bot_snippet import is_bot, run_bot_block

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _snippets() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for number, match in enumerate(_BLOCK.finditer(text), start=1):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{page.relative_to(ROOT)}:{line} (block {number})", match.group(1)))
    return found


SNIPPETS = _snippets()


def test_every_page_with_code_is_collected() -> None:
    pages_with_blocks = {where.split(":")[0] for where, _ in SNIPPETS}
    assert "README.md" in pages_with_blocks
    assert len(pages_with_blocks) >= 10, pages_with_blocks


def test_no_code_block_is_left_unmarked() -> None:
    """A block with no language would escape the tests: every fence names one."""
    for page in PAGES:
        fences = re.findall(r"^```(\S*)", page.read_text(), re.MULTILINE)
        openings = fences[0::2]
        assert "" not in openings, f"{page.name}: a code block names no language"


@pytest.mark.parametrize(("where", "code"), SNIPPETS, ids=[where for where, _ in SNIPPETS])
def test_snippet_runs(where: str, code: str, redis_url: str, tmp_path: Path) -> None:
    code = code.replace("redis://localhost:6379/0", redis_url)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        if is_bot(code):
            run_bot_block(code, where)
        else:
            exec(compile(code, where, "exec"), {"__name__": "__main__"})
    finally:
        os.chdir(cwd)
