"""The documentation site builds strictly, and the README stays a short front door that keeps CI's commands.

``mkdocs build --strict`` fails on any warning: a broken link or anchor, a page left out of the nav, an
API object mkdocstrings cannot find or a cross-reference it cannot resolve. The test extra installs
MkDocs, Material and mkdocstrings, so a missing tool fails here rather than skipping.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 160
#: Images and other assets the site serves from docs/ stay small: they live in the repository.
MAX_ASSET_BYTES = 150_000


def test_docs_build_strict(tmp_path):
    site = tmp_path / "site"
    # Material prints an end-of-life banner on every build; it is not a warning of ours.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for module in ("rgdm.algorithms.rgdm", "rgdm.algorithms.rgdm_data", "rgdm.algorithms.rgdm_model",
                   "rgdm.algorithms.rgdm_stepwise", "rgdm.diffusion.process", "rgdm.rewards", "rgdm.domains.base"):
        assert f'id="{module}.' in api, f"the API reference renders no member of {module}"


def test_docs_assets_are_small():
    large = [f"{p.relative_to(ROOT)} ({p.stat().st_size} bytes)" for p in (ROOT / "docs").rglob("*")
             if p.is_file() and p.stat().st_size > MAX_ASSET_BYTES]
    assert not large, f"files under docs/ above {MAX_ASSET_BYTES} bytes: {large}"


def _ci_commands() -> list[str]:
    """The commands .ci/run runs, less its shell set-up (shebang, comments, set, cd)."""
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines
            if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))]


def test_readme_is_short_and_keeps_the_ci_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; keep it to {MAX_README_LINES}"
    commands = _ci_commands()
    assert len(commands) >= 2, f"expected the install and test commands in .ci/run, found {commands}"
    # A README line holds the command exactly, optionally followed by a comment.
    readme_commands = {line.split("  #")[0].strip() for line in lines}
    missing = [command for command in commands if command not in readme_commands]
    assert not missing, f"README.md must show the commands CI runs, exactly: {missing}"


def test_readme_links_exist():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets, "the README links to the documentation"
    broken = [t for t in targets if "://" not in t and not (ROOT / t.split("#")[0]).exists()]
    assert not broken, f"README.md links to missing files: {broken}"
