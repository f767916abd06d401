"""The offline check of the built site (docs/check_offline.py, run by CI after the Sphinx build) can fail."""

import importlib.util
import os
import tempfile

from tests.helpers.library import REPO

_spec = importlib.util.spec_from_file_location("check_offline", os.path.join(REPO, "docs", "check_offline.py"))
check_offline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_offline)


def _site(page: str, css: str = "") -> str:
  root = tempfile.mkdtemp()
  os.makedirs(os.path.join(root, "_static", "mathjax"))
  open(os.path.join(root, "_static", "mathjax", "tex-chtml.js"), "w").close()
  open(os.path.join(root, "page.html"), "w").write(page)
  open(os.path.join(root, "_static", "theme.css"), "w").write(css)
  return root


def test_a_remote_script_style_or_font_is_found_and_a_link_is_not():
  root = _site('<script defer src="https://cdn.jsdelivr.net/npm/mathjax@4/tex-mml-chtml.js"></script>'
               '<link rel="stylesheet" href="//fonts.example.org/a.css"><a href="https://github.com/x">source</a>'
               '<script src="_static/mathjax/tex-chtml.js"></script>',
               css="@font-face { src: url('https://fonts.example.org/f.woff2') }")
  assert sorted(check_offline.remote_assets(root)) == [
      (os.path.join("_static", "theme.css"), "https://fonts.example.org/f.woff2"),
      ("page.html", "//fonts.example.org/a.css"),
      ("page.html", "https://cdn.jsdelivr.net/npm/mathjax@4/tex-mml-chtml.js")]
  assert check_offline.main(["check_offline.py", root]) == 1


def test_a_local_site_passes_and_a_missing_mathjax_fails():
  root = _site('<script defer src="_static/mathjax/tex-chtml.js"></script><a href="https://example.org">x</a>')
  assert check_offline.main(["check_offline.py", root]) == 0
  os.remove(os.path.join(root, "_static", "mathjax", "tex-chtml.js"))
  assert check_offline.main(["check_offline.py", root]) == 1


def test_a_link_to_a_missing_page_is_found():
  root = _site('<a href="other.html">ok</a><a href="missing.html#x">broken</a><a href="https://example.org">x</a>')
  open(os.path.join(root, "other.html"), "w").write("<p>here</p>")
  assert check_offline.broken_links(root) == [("page.html", "missing.html")]
  assert check_offline.main(["check_offline.py", root]) == 1
