"""The package a user installs: ``python -m build`` makes an sdist and a wheel whose
metadata passes ``twine check``, and the wheel, installed alone into a fresh
virtualenv (no dev tools, no checkout on the path), runs the README's quick start.
"""

from __future__ import annotations

import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.process  # builds, and installs into a new virtualenv

ROOT = Path(__file__).resolve().parent.parent


def _run(*command: str | Path, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _quick_start() -> str:
    """The README's first Python block: the bot a new user starts from."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^```python\n(.*?)^```", readme, re.DOTALL | re.MULTILINE)
    assert match is not None
    return match.group(1)


def test_the_wheel_alone_runs_the_quick_start(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist)
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(dist.iterdir())
    _run(sys.executable, "-m", "twine", "check", "--strict", wheels[0], sdists[0])

    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "actorsess/py.typed" in names
    assert "actorsess/testing/_botapi.py" in names
    assert not [
        n for n in names if n.startswith(("tests/", "examples/", "benchmarks/", "harness/"))
    ]

    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # Only the wheel and what it declares; versions pinned as the suite's own.
    _run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "-c", ROOT / "constraints.txt", wheels[0])  # fmt: skip
    app = tmp_path / "app"
    app.mkdir()
    where = _run(python, "-c", "import actorsess; print(actorsess.__file__)", cwd=app)
    assert where.startswith(str(env_dir)), where  # the installed copy, not the checkout
    dev_tool = subprocess.run([python, "-c", "import pytest"], cwd=app, capture_output=True)
    assert dev_tool.returncode != 0  # nothing of the dev extra came along

    (app / "bot.py").write_text(_quick_start())
    replies = _run(python, ROOT / "tests" / "bot_snippet.py", app / "bot.py", cwd=app)
    sent = [line[6:] for line in replies.splitlines() if line.startswith("REPLY ")]
    assert sent == ["🍏 apples: 1", "🍏 apples: 2", "🍏 apples: 3"]
    assert (app / "sessions.db").exists()
