"""The documentation site (docs/ and the API reference from the docstrings) builds strict: a
broken docstring section, a page missing from the navigation or a bad reference fails the suite."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_documentation_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    cmd = [
        sys.executable,
        "-m",
        "mkdocs",
        "build",
        "--strict",
        "--config-file",
        str(ROOT / "mkdocs.yml"),
        "--site-dir",
        str(site),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("fastpg.Trainer", "fastpg.Config", "fastpg.load_policy", "fastpg.reward_to_go"):
        assert name in api, name
