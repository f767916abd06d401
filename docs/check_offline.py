"""Checks a built site: no page may load a script, style, font or image from the network, and every link
between its pages leads to a file of the site.

    python3 docs/check_offline.py docs/_build/html

Exits 1 listing each page and address found (links a reader follows, ``<a href>``, are allowed); CI runs it
after the Sphinx build. The formulas render from the MathJax copy in ``_static/mathjax``.
"""

import html
import os
import re
import sys

# Attributes that make a browser fetch something as the page loads.
_LOADED = re.compile(r"<(script|link|img|iframe|source|embed)\b[^>]*?\b(src|href)\s*=\s*[\"']((?:https?:)?//[^\"']+)",
                     re.IGNORECASE)
_CSS_URL = re.compile(r"url\(\s*[\"']?((?:https?:)?//[^\"')]+)", re.IGNORECASE)
_IMPORT = re.compile(r"@import\s+[\"']((?:https?:)?//[^\"']+)", re.IGNORECASE)


def remote_assets(root: str) -> list[tuple[str, str]]:
  """``[(page, address)]`` for every remote asset a built HTML page or stylesheet loads."""
  found = []
  for folder, _, names in os.walk(root):
    for name in names:
      if not name.endswith((".html", ".css")):
        continue
      path = os.path.join(folder, name)
      text = open(path, encoding="utf-8", errors="replace").read()
      addresses = [m.group(3) for m in _LOADED.finditer(text)] if name.endswith(".html") else []
      addresses += [m.group(1) for m in _CSS_URL.finditer(text)] + [m.group(1) for m in _IMPORT.finditer(text)]
      found += [(os.path.relpath(path, root), a) for a in addresses]
  return found


_HREF = re.compile(r"\bhref\s*=\s*\"([^\"#?]+)")


def broken_links(root: str) -> list[tuple[str, str]]:
  """``[(page, target)]`` for every link of a built page to a file of the site that does not exist
  (the theme's templates under ``_static`` are not pages)."""
  found = []
  for folder, _, names in os.walk(root):
    if os.path.relpath(folder, root).split(os.sep)[0] == "_static":
      continue
    for name in names:
      if not name.endswith(".html"):
        continue
      path = os.path.join(folder, name)
      for target in _HREF.findall(open(path, encoding="utf-8", errors="replace").read()):
        if re.match(r"^([a-z]+:|//)", target):
          continue
        if not os.path.exists(os.path.normpath(os.path.join(folder, html.unescape(target)))):
          found.append((os.path.relpath(path, root), target))
  return found


def main(argv: list[str]) -> int:
  if len(argv) != 2 or not os.path.isdir(argv[1]):
    print(f"usage: python3 {argv[0]} <built html folder>", file=sys.stderr)
    return 2
  found = remote_assets(argv[1])
  for page, address in found:
    print(f"{page}: loads {address}", file=sys.stderr)
  broken = broken_links(argv[1])
  for page, target in broken:
    print(f"{page}: links to {target}, which the site does not have", file=sys.stderr)
  found = found + broken
  if not os.path.exists(os.path.join(argv[1], "_static", "mathjax", "tex-chtml.js")):
    print("_static/mathjax/tex-chtml.js is missing: the formulas would not render offline", file=sys.stderr)
    return 1
  return 1 if found else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
