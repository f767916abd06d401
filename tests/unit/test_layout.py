"""The package's layering: no import cycle, every module with ``__all__``, nothing private re-exported.

Read from the source (the import statements, not what happens to be loaded),
so a new upward import or cycle fails here whether or not a test imports it.
"""

import ast
import importlib
import inspect
import pathlib
import tempfile

from absl.testing import absltest

import hdml_jax

PACKAGE = pathlib.Path(hdml_jax.__file__).parent


def modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = ("hdml_jax",) + path.relative_to(PACKAGE).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = path
  return out


def imports(name: str, path: pathlib.Path, known) -> tuple[set[str], set[str]]:
  """``(modules of hdml_jax imported, top-level third-party packages imported)`` by one module."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  inner, outer = set(), set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      if base.split(".")[0] == "hdml_jax":
        for alias in node.names:
          full = f"{base}.{alias.name}"
          inner.add(full if full in known else base)
      else:
        outer.add(base.split(".")[0])
    elif isinstance(node, ast.Import):
      for alias in node.names:
        (inner if alias.name.split(".")[0] == "hdml_jax" else outer).add(
            alias.name if alias.name.split(".")[0] == "hdml_jax" else alias.name.split(".")[0])
  return {m for m in inner if m in known and m != name}, outer


def graph():
  known = modules()
  return {name: imports(name, path, known) for name, path in known.items()}


def reachable(g, start):
  seen, stack = set(), [start]
  while stack:
    for dep in g[stack.pop()][0]:
      if dep not in seen:
        seen.add(dep)
        stack.append(dep)
  return seen


def find_cycle(edges: dict[str, set[str]]):
  state, path = {}, []

  def visit(node):
    state[node] = "open"
    path.append(node)
    for dep in sorted(edges[node]):
      if state.get(dep) == "open":
        return path[path.index(dep):] + [dep]
      if dep not in state:
        found = visit(dep)
        if found:
          return found
    path.pop()
    state[node] = "done"
    return None

  for node in sorted(edges):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


class LayoutTest(absltest.TestCase):

  def test_no_import_cycle(self):
    edges = {name: deps for name, (deps, _) in graph().items()}
    self.assertIsNone(find_cycle(edges))

  def test_the_cycle_finder_finds_one(self):   # the check above can fail
    self.assertEqual(find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}), ["a", "b", "c", "a"])
    self.assertIsNone(find_cycle({"a": {"b"}, "b": set()}))

  def test_the_config_imports_no_training_code(self):
    deps, outer = graph()["hdml_jax.config"]
    self.assertEqual(deps, set())
    self.assertFalse(outer & {"jax", "optax", "flax"}, outer)

  def test_the_own_loop_head_pulls_in_no_optimizer(self):
    g = graph()
    below = reachable(g, "hdml_jax.head") | {"hdml_jax.head"}
    self.assertFalse(below & {"hdml_jax.optimizers", "hdml_jax.train_state", "hdml_jax.train_step"}, below)
    self.assertNotIn("optax", g["hdml_jax.head"][1])   # (losses.py uses optax's losses, not its optimizers)

  def test_inference_is_below_the_train_state(self):
    self.assertNotIn("hdml_jax.train_state", reachable(graph(), "hdml_jax.inference"))

  def test_every_module_declares_all_and_exports_nothing_private(self):
    for name, path in modules().items():
      module = importlib.import_module(name)
      self.assertTrue(hasattr(module, "__all__"), f"{name} has no __all__")
      private = [n for n in module.__all__ if n.startswith("_")]
      self.assertEqual(private, [], f"{name}.__all__ exports private names")
      missing = [n for n in module.__all__ if not hasattr(module, n)]
      self.assertEqual(missing, [], f"{name}.__all__ names what it lacks")

  def test_only_package_inits_re_export(self):
    # A module's __all__ lists what it defines; re-exporting is the packages' __init__'s job.
    for name, path in modules().items():
      if path.name == "__init__.py":
        continue
      module = importlib.import_module(name)
      for export in module.__all__:
        value = getattr(module, export)
        home = getattr(value, "__module__", None)
        if inspect.isfunction(value) or inspect.isclass(value):
          self.assertEqual(home, name, f"{name} re-exports {export} from {home}")

  def test_the_step_module_defines_only_the_step(self):
    import hdml_jax.train_step as step

    self.assertEqual(sorted(step.__all__), ["Batch", "StepFn", "make_train_step"])
    self.assertFalse(hasattr(step, "_check_batch"))


if __name__ == "__main__":
  absltest.main()


TESTS = pathlib.Path(__file__).resolve().parents[1]


def application_imports(path: pathlib.Path) -> list[str]:
  """The imports of ``experiments`` (or of the helpers that import it) by one test file, as ``line: module``."""
  out = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [node.module]
    else:
      continue
    out += [f"{node.lineno}: {n}" for n in names
            if n == "experiments" or n.startswith("experiments.") or n == "tests.helpers.runs"]
  return out


class TestLayoutTest(absltest.TestCase):
  """The library's tests run without the application: ``tests/unit`` outside ``tests/unit/experiments``, and
  the helpers they use, import nothing of ``experiments``."""

  def test_the_library_tests_import_nothing_of_the_application(self):
    library_tests = [p for p in sorted((TESTS / "unit").rglob("*.py")) if "experiments" not in p.parts]
    helpers = [p for p in sorted((TESTS / "helpers").glob("*.py")) if p.name != "runs.py"]
    found = {str(p.relative_to(TESTS)): application_imports(p) for p in library_tests + helpers}
    self.assertEqual({k: v for k, v in found.items() if v}, {})
    self.assertGreater(len(found), 30)

  def test_the_check_finds_an_application_import(self):   # the check above can fail
    with tempfile.TemporaryDirectory() as d:
      path = pathlib.Path(d) / "t.py"
      path.write_text("import os\nfrom experiments import datasets\nfrom tests.helpers.runs import tiny_cub\n"
                      "import experiments.train as t\nfrom tests.helpers.library import REPO\n")
      self.assertEqual(application_imports(path), ["2: experiments", "3: tests.helpers.runs",
                                                   "4: experiments.train"])
