"""The Python examples of the README and of the documentation pages run as written.

(The docstrings' examples run as doctests: ``--doctest-modules`` in pyproject.toml.)
"""

import os
import re

import pytest
from absl.testing import absltest, parameterized

from tests.helpers.library import REPO

PAGES = ("README.md", "docs/evaluation.md")


def python_blocks(path: str) -> list[str]:
  text = open(os.path.join(REPO, path)).read()
  return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


class DocsExamplesTest(parameterized.TestCase):

  @parameterized.parameters(*PAGES)
  @pytest.mark.slow
  def test_every_python_block_runs(self, path):
    blocks = python_blocks(path)
    self.assertNotEmpty(blocks, f"{path} has no python block")
    for i, block in enumerate(blocks):
      namespace = {}
      exec(compile(block, f"{path} block {i}", "exec"), namespace)   # noqa: S102 (the docs' own code)

  def test_blocks_are_found(self):
    self.assertIn("hd.npair_loss", python_blocks("README.md")[0])


if __name__ == "__main__":
  absltest.main()
