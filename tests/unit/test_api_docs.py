"""The API reference covers every public name, and every public name has its documentation.

Public: each name in the ``__all__`` of a module or package of ``hdml_jax``
whose path has no component starting with an underscore. The reference pages
(``docs/api/*.md``) list names in ``autosummary`` blocks under a
``currentmodule``; a name a package re-exports is documented where it is
defined. Functions and classes need a docstring, constants a ``#:`` comment
where they are assigned (what Sphinx shows for them). The Sphinx build itself
(``-W``, offline) runs as a CI step; this check needs no Sphinx.
"""

import ast
import importlib
import inspect
import os
import pkgutil
import re
import tempfile

from absl.testing import absltest

import hdml_jax
from tests.helpers.library import REPO

API = os.path.join(REPO, "docs", "api")


def public_modules() -> list[str]:
  names = ["hdml_jax"]
  for info in pkgutil.walk_packages(hdml_jax.__path__, "hdml_jax."):
    if not any(part.startswith("_") for part in info.name.split(".")[1:]):
      names.append(info.name)
  return names


def documented_names(folder: str = API) -> set[str]:
  """Fully qualified names the reference pages document (their autosummary entries)."""
  out = set()
  for page in sorted(os.listdir(folder)):
    if not page.endswith(".md"):
      continue
    current, in_summary = None, False
    for line in open(os.path.join(folder, page)):
      stripped = line.strip()
      if stripped.startswith(".. currentmodule::"):
        current, in_summary = stripped.split("::", 1)[1].strip(), False
      elif stripped.startswith(".. autosummary::"):
        in_summary = True
      elif in_summary and stripped and not stripped.startswith(":") and line.startswith("   "):
        out.add(f"{current}.{stripped}")
      elif in_summary and stripped and not line.startswith(" "):
        in_summary = False
  return out


def linked_names(page: str) -> set[str]:
  """Fully qualified names a page links to (``{py:obj}`name <target>```)."""
  return set(re.findall(r"\{py:\w+\}`[^`<]*<([\w.]+)>`", open(page).read()))


def home(obj, module: str) -> str:
  """The public module that documents ``obj``: where it is defined, private parts dropped."""
  defined = getattr(obj, "__module__", None) if (inspect.isfunction(obj) or inspect.isclass(obj)) else None
  parts = (defined or module).split(".")
  while any(part.startswith("_") for part in parts[1:]):
    parts = parts[:-1]
  return ".".join(parts)


def constant_comments(module: str) -> set[str]:
  """Names assigned right after a ``#:`` comment in the module (or, for a package, in any of its modules)."""
  mod = importlib.import_module(module)
  paths = [mod.__file__]
  if hasattr(mod, "__path__"):
    paths += [os.path.join(mod.__path__[0], f) for f in os.listdir(mod.__path__[0]) if f.endswith(".py")]
  out = set()
  for path in paths:
    lines = open(path).read().splitlines()
    for node in ast.parse("\n".join(lines)).body:
      if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.lineno > 1 and \
          lines[node.lineno - 2].lstrip().startswith("#:"):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        out.update(t.id for t in targets if isinstance(t, ast.Name))
  return out


class ApiDocsTest(absltest.TestCase):

  def test_every_public_name_is_in_the_reference(self):
    listed = documented_names()
    missing = []
    for module in public_modules():
      mod = importlib.import_module(module)
      for name in mod.__all__:
        where = home(getattr(mod, name), module)
        # A constant a package re-exports carries no module: it is documented in one of the package's modules.
        in_package = any(full.startswith(module + ".") and full.endswith("." + name) for full in listed)
        if f"{module}.{name}" not in listed and f"{where}.{name}" not in listed and not \
            (hasattr(mod, "__path__") and in_package):
          missing.append(f"{module}.{name}")
    self.assertEqual(missing, [], "public names missing from docs/api/*.md")

  def test_the_package_page_links_every_name_of_the_package(self):
    links = linked_names(os.path.join(API, "package.md"))
    want = {f"{home(getattr(hdml_jax, n), 'hdml_jax')}.{n}" for n in hdml_jax.__all__}
    self.assertEqual(sorted(want - links), [])
    self.assertEqual(sorted(links - want), [])
    self.assertTrue(links <= documented_names(), sorted(links - documented_names()))

  def test_the_reference_lists_nothing_that_does_not_exist(self):
    stale = []
    for full in sorted(documented_names()):
      module, _, name = full.rpartition(".")
      try:
        mod = importlib.import_module(module)
      except ImportError:
        stale.append(full)
        continue
      if not hasattr(mod, name):
        stale.append(full)
    self.assertEqual(stale, [])

  def test_every_public_name_has_documentation(self):
    undocumented = []
    for module in public_modules():
      mod = importlib.import_module(module)
      self.assertTrue((mod.__doc__ or "").strip(), f"{module} has no module docstring")
      comments = constant_comments(module)
      for name in mod.__all__:
        obj = getattr(mod, name)
        if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismodule(obj):
          if not (inspect.getdoc(obj) or "").strip() or (inspect.isclass(obj) and obj.__doc__ is None):
            undocumented.append(f"{module}.{name}")
        elif name not in comments and name not in constant_comments(home(obj, module)):
          undocumented.append(f"{module}.{name} (a constant: document it with a #: comment)")
    self.assertEqual(undocumented, [])

  def test_the_checks_can_fail(self):
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "page.md"), "w") as f:
      f.write("```{eval-rst}\n.. currentmodule:: hdml_jax.losses\n\n.. autosummary::\n   :toctree: x\n\n"
              "   npair_loss\n```\n\n| {py:obj}`evaluate <hdml_jax.evaluation.evaluate>` |\n")
    self.assertEqual(documented_names(folder), {"hdml_jax.losses.npair_loss"})
    self.assertEqual(linked_names(os.path.join(folder, "page.md")), {"hdml_jax.evaluation.evaluate"})
    self.assertNotIn("NOT_A_CONSTANT", constant_comments("hdml_jax.config"))
    self.assertIn("HDML_LOSSES", constant_comments("hdml_jax.config"))
    self.assertIn("KNN_ENGINES", constant_comments("hdml_jax.evaluation"))


if __name__ == "__main__":
  absltest.main()
