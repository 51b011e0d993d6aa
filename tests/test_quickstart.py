"""The README's Python quick-start runs as written, in a fresh interpreter: load, fine-tune, sample, evaluate."""

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "## Python quick-start"


def quickstart_code() -> str:
    """The first ``python`` code block under the README's quick-start heading."""
    text = README.read_text(encoding="utf-8")
    assert HEADING in text, f"README.md has no {HEADING!r} section"
    match = re.search(r"```python\n(.*?)```", text.split(HEADING, 1)[1], re.DOTALL)
    assert match, "the README's Python quick-start holds a python code block"
    return match.group(1)


def test_the_readme_quickstart_runs_and_fine_tuning_lifts_the_reward(tmp_path):
    code = quickstart_code()
    assert len(code.strip().splitlines()) <= 10, "the quick-start stays at ten lines"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    before, after = (float(value) for value in re.findall(r"mean reward ([0-9.]+)", result.stdout))
    assert after > before + 0.3, result.stdout
    assert (tmp_path / "runs" / "quickstart" / "final.safetensors").is_file()
