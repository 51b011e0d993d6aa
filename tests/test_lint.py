"""The code base stays ruff-clean (CI runs this with the rest of the tests; ruff comes with [test])."""

import subprocess
import sys
from pathlib import Path


def test_ruff_is_clean():
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(root)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
