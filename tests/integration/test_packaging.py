"""The built wheel: the library only, typed, with its metadata.

Builds the wheel offline (``python -m build --wheel --no-isolation``) from a
copy of the project's files, so the checkout gets no build/ or egg-info
folder, and lists what it would install.
"""

import email.parser
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import zipfile

import pytest

from tests.helpers.library import REPO

pytestmark = pytest.mark.slow   # end-to-end runs, subprocesses, packaging



def _build_available() -> str | None:
  """Why the wheel cannot be built here, or None."""
  for module in ("build", "setuptools", "wheel"):
    if importlib.util.find_spec(module) is None:
      return f"{module} is not installed (it comes with the test extra: pip install -e '.[test]')"
  return None


@unittest.skipIf(_build_available(), _build_available() or "")
class WheelTest(unittest.TestCase):

  @classmethod
  def setUpClass(cls):
    src = tempfile.mkdtemp()
    for name in ("pyproject.toml", "README.md", "hdml_jax", "experiments"):
      path = os.path.join(REPO, name)
      if os.path.isdir(path):
        shutil.copytree(path, os.path.join(src, name), ignore=shutil.ignore_patterns("__pycache__"))
      else:
        shutil.copy(path, src)
    out = os.path.join(src, "dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out, src],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode:
      raise AssertionError(f"python -m build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    wheels = [f for f in os.listdir(out) if f.endswith(".whl")]
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(os.path.join(out, wheels[0])) as z:
      cls.names = z.namelist()
      dist_info = next(n.split("/")[0] for n in cls.names if n.split("/")[0].endswith(".dist-info"))
      cls.metadata = email.parser.Parser().parsestr(z.read(f"{dist_info}/METADATA").decode())
      cls.entry_points = (z.read(f"{dist_info}/entry_points.txt").decode()
                          if f"{dist_info}/entry_points.txt" in cls.names else "")
    shutil.rmtree(src)

  def test_only_the_library_is_installed(self):
    top = {n.split("/")[0] for n in self.names}
    self.assertEqual({t for t in top if not t.endswith(".dist-info")}, {"hdml_jax"})
    self.assertFalse([n for n in self.names if n.startswith(("experiments/", "tests/"))])
    self.assertNotIn("console_scripts", self.entry_points)   # the CLI runs from the checkout
    # Every sub-package of the library is there.
    for pkg in ("hdml_jax/__init__.py", "hdml_jax/models/__init__.py", "hdml_jax/data/__init__.py",
                "hdml_jax/head.py", "hdml_jax/losses/__init__.py", "hdml_jax/losses/_label.py"):
      self.assertIn(pkg, self.names)

  def test_typed_and_described(self):
    self.assertIn("hdml_jax/py.typed", self.names)
    m = self.metadata
    self.assertEqual(m["Name"], "hdml_jax")
    self.assertTrue(m["Version"])
    self.assertIn("Hardness-Aware Deep Metric Learning", m["Summary"])
    self.assertIn("Apache", m["License"] or "")
    self.assertTrue(m["Requires-Python"])
    self.assertIn("Typing :: Typed", m.get_all("Classifier"))
    requires = " ".join(m.get_all("Requires-Dist"))
    for dep in ("jax", "flax", "optax", "chex"):
      self.assertIn(dep, requires)
    self.assertIn("experiments", m.get_all("Provides-Extra"))
    self.assertIn("hdml_jax", m.get_payload())     # the README is the long description


if __name__ == "__main__":
  unittest.main()
