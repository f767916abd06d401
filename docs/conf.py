"""Sphinx configuration of the hdml_jax documentation (built offline: no intersphinx, no remote assets).

    python3 -m pip install -e ".[docs]"
    python3 -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)   # experiments/ (the own-loop tutorial includes its example) and hdml_jax from the checkout
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import hdml_jax  # noqa: E402

project = "hdml_jax"
author = "The hdml_jax authors"
copyright = "2026, The hdml_jax authors"
release = version = hdml_jax.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx-mathjax-offline",   # MathJax served from the built site (_static/mathjax), not from a CDN
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "losses/*.md"]   # tables included by study_losses.md

# The API reference: one entry per public name, generated from the docstrings.
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": False, "show-inheritance": True}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
add_module_names = False

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# Offline: no intersphinx, and the theme's optional remote features off.
html_theme = "sphinx_book_theme"
html_title = "hdml_jax"
html_theme_options = {"show_navbar_depth": 1, "use_download_button": False}
html_static_path = ["_static"]
html_css_files = ["wide.css"]   # wide tables scroll, long titles wrap
nitpicky = False


# Module constants carry their documentation in a ``#:`` comment where they are defined. A constant that a
# package re-exports from one of its modules (``hdml_jax.evaluation.KNN_ENGINES``) is documented with the
# comment of its defining module; a constant is never documented with its type's docstring (tuple's, dict's).
def _constant_docs(app, what, name, obj, options, lines):
  if what not in ("data", "attribute"):
    return
  import importlib
  import pkgutil

  from sphinx.pycode import ModuleAnalyzer

  module_name, _, attr = name.rpartition(".")
  candidates = [module_name]
  try:
    module = importlib.import_module(module_name)
    if hasattr(module, "__path__"):
      candidates += [m.name for m in pkgutil.iter_modules(module.__path__, module_name + ".")]
  except ImportError:
    return
  for candidate in candidates:
    try:
      docs = ModuleAnalyzer.for_module(candidate).find_attr_docs()
    except Exception:   # not a Python source module
      continue
    if ("", attr) in docs:
      lines[:] = [line for line in docs[("", attr)] if line.strip() or lines]
      return
  lines[:] = []   # undocumented (tests/unit/test_api_docs.py fails on it): at least not the type's docstring


def _drop_sourceless_modules(app, env):
  """viewcode lists every module it met in _modules/index.html, also those it found no source for (an object
  whose module is ``builtins``), whose links then lead nowhere: keep only the modules with a source page."""
  modules = getattr(env, "_viewcode_modules", {})
  for name in [n for n, entry in modules.items() if not entry]:
    del modules[name]


def setup(app):
  app.connect("autodoc-process-docstring", _constant_docs)
  app.connect("env-updated", _drop_sourceless_modules)
