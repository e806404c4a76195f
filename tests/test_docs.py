"""The Sphinx documentation builds with warnings as errors, API pages included."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx", reason="sphinx is not installed (pip install -e '.[docs]')")
    out = tmp_path / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", str(DOCS), str(out)]
    # the plot examples run with the settings of their ``.. example: settings`` markers (docs/example_settings.py)
    env = {**os.environ, "PPL_EXT_DOCS_EXAMPLE_SETTINGS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    log = f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert proc.returncode == 0, f"sphinx-build failed (exit {proc.returncode}):\n{log}"
    assert (out / "index.html").is_file()
    api = out / "api.html"
    assert api.is_file()
    assert "from_logdensity" in api.read_text(encoding="utf-8")
    # the worked examples ran at build time: each page embeds the figures its ``.. plot::`` code made
    for page in sorted((DOCS / "examples").glob("*.rst")):
        if page.stem == "index":
            continue
        html = (out / "examples" / f"{page.stem}.html").read_text(encoding="utf-8")
        assert re.search(r'<img [^>]*src="[^"]*\.png"', html), f"{page.name}: no figure in the built page"
