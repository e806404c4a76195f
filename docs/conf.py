"""Sphinx configuration of the ppl-ext documentation.

Build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` from the
repository root.  Everything here works offline: no intersphinx, no remote themes.  The
API pages import the real packages (JAX, NumPyro, torch and Pyro must be installed, as
with ``pip install -e ".[all]"``); nothing is mocked.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # example_settings

import adapters  # noqa: E402  (needs the repository root on sys.path)
from adapters.metrics import DEFAULT_RULE  # noqa: E402

project = "ppl-ext"
author = "ppl-ext contributors"
copyright = "ppl-ext contributors"
release = adapters.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    "matplotlib.sphinxext.plot_directive",
    "example_settings",  # smaller settings for the plot examples in the test build
]

# the ``.. plot::`` examples run at build time (offline, on CPU) and embed their figures
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 90)]
plot_pre_code = "import jax\njax.config.update('jax_platform_name', 'cpu')\n"

root_doc = "index"
source_suffix = {".rst": "restructuredtext"}
exclude_patterns = ["_build"]
nitpicky = False
# The two backends define twins with the same names (DRHMC, LikelihoodFreeProblem, ...): an
# unqualified type hint that autodoc cannot evaluate (e.g. on a jax.jit-wrapped function) then
# finds a target in each backend.  Those ambiguities are the only python-reference warnings here.
suppress_warnings = ["ref.python"]

# Google-style docstrings only.
napoleon_google_docstring = True
napoleon_numpy_docstring = False

autodoc_member_order = "bysource"
autodoc_typehints = "signature"

html_theme = "alabaster"
html_title = f"ppl-ext {release}"

# The pass rule's thresholds, read from the code so that docs/metrics.rst cannot drift.
rst_epilog = f"""
.. |rule_min_ess| replace:: {DEFAULT_RULE.min_ess:g}
.. |rule_max_z_mean| replace:: {DEFAULT_RULE.max_z_mean:g}
.. |rule_max_log_sd| replace:: {DEFAULT_RULE.max_log_sd:g}
.. |rule_max_quantile| replace:: {DEFAULT_RULE.max_quantile:g}
"""
