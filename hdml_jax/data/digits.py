"""The embedded default dataset: scikit-learn's handwritten digits.

1,797 8x8 grey images shipped inside scikit-learn, so it works offline on a
fresh machine. Classes 0-4 train, 5-9 test (class-disjoint, as in the
paper's zero-shot retrieval protocol).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "TEST_CLASSES",
    "TRAIN_CLASSES",
    "load_digits_split",
]


#: The digits that train in the embedded default run.
TRAIN_CLASSES = (0, 1, 2, 3, 4)
#: The digits that test (class-disjoint from the training ones).
TEST_CLASSES = (5, 6, 7, 8, 9)


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns ``images [N, 8, 8, 1] float32 in [0, 1]`` and ``labels [N] int32``.

  Args:
    split: ``"train"`` (classes 0-4) or ``"test"`` (classes 5-9). Labels keep
      their digit value.
  """
  if split not in ("train", "test"):
    raise ValueError(f"load_digits_split: split must be 'train' or 'test', got {split!r}.")
  try:
    from sklearn.datasets import load_digits
  except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        "The digits dataset needs scikit-learn: pip install 'hdml_jax[experiments]'."
    ) from e
  data = load_digits()
  keep = np.isin(data.target, TRAIN_CLASSES if split == "train" else TEST_CLASSES)
  images = (data.images[keep] / 16.0).astype(np.float32)[..., None]
  return images, data.target[keep].astype(np.int32)
