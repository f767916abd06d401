"""The study tables' shared pretrained file: one process pretrains it, a concurrent table waits for it."""

import argparse
import fcntl
import os
import tempfile
import threading
import time

from absl.testing import absltest

from experiments import pretrain
from experiments.studies import cub100_tables


class PretrainedFileTest(absltest.TestCase):

  def test_a_second_table_waits_for_the_first_ones_pretraining_and_does_not_redo_it(self):
    root, calls = tempfile.mkdtemp(), []

    def fake_pretrain(cfg, workdir):
      calls.append(cfg.seed)
      for name in (pretrain.PRETRAINED_FILE, "results.json"):
        with open(os.path.join(workdir, name), "w") as f:
          f.write("{}")

    args = argparse.Namespace(pretrain_steps=2, pretrain_lr=1e-3, common={})
    real, pretrain.pretrain = pretrain.pretrain, fake_pretrain
    try:
      os.makedirs(os.path.join(root, "pretrain_seed3"))
      with open(os.path.join(root, "pretrain_seed3", ".lock"), "w") as held:   # another table is pretraining
        fcntl.flock(held, fcntl.LOCK_EX)
        got = []
        waiting = threading.Thread(target=lambda: got.append(cub100_tables.pretrained_file(root, 3, args)))
        waiting.start()
        time.sleep(0.5)
        self.assertTrue(waiting.is_alive())
        self.assertEqual(calls, [])
        for name in (pretrain.PRETRAINED_FILE, "results.json"):   # ... and finishes
          with open(os.path.join(root, "pretrain_seed3", name), "w") as f:
            f.write("{}")
      waiting.join(10)
      self.assertEqual(got, [os.path.join(root, "pretrain_seed3", pretrain.PRETRAINED_FILE)])
      self.assertEqual(calls, [])   # found the other table's file
      cub100_tables.pretrained_file(root, 4, args)
      self.assertEqual(calls, [4])
    finally:
      pretrain.pretrain = real


if __name__ == "__main__":
  absltest.main()
