"""The code base stays ruff-clean (CI runs this with the rest of the tests; ruff comes with [test])."""

import subprocess
import sys
from pathlib import Path


def test_ruff_is_clean():
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(root)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_layers_point_one_way():
    """import-linter's contract in pyproject.toml: core, rewards, algorithms, domains, engine, then the CLI
    and benchmarks, each importing only the layers below it (algorithms never import a domain)."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                             "sys.exit(lint_imports())"], capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
