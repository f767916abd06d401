"""The one override syntax of the studies and benchmarks: ``--config.<key>=<value>``, typed like the key."""

import tempfile

import ml_collections
from absl.testing import absltest, parameterized

from experiments.configs import cub100
from experiments.overrides import apply_overrides, config_keys, parse_value, split_overrides


def small_config():
  c = ml_collections.ConfigDict()
  c.name = "digits"
  c.steps = 10
  c.lr = 1e-3
  c.flag = True
  c.classes = (0, 5)
  c.clip = ml_collections.config_dict.placeholder(float)
  c.model = ml_collections.ConfigDict({"kwargs": ml_collections.ConfigDict({"widths": (4, 8)}), "dim": 8})
  return c


class SplitTest(absltest.TestCase):

  def test_both_forms_and_the_rest_in_order(self):
    rest, overrides = split_overrides(["--workdir", "w", "--config.a.b=1", "--seeds", "0,1",
                                       "--config.c", "x y", "--config.a.b=2"])
    self.assertEqual(rest, ["--workdir", "w", "--seeds", "0,1"])
    self.assertEqual(overrides, {"a.b": "2", "c": "x y"})   # the later value of a key wins

  def test_a_value_may_hold_equals_signs(self):
    self.assertEqual(split_overrides(["--config.k=a=b"])[1], {"k": "a=b"})

  def test_a_last_override_without_value_is_refused(self):
    with self.assertRaisesRegex(ValueError, r"^--config\.lr has no value: write --config\.lr=<value>\.$"):
      split_overrides(["--config.lr"])
    with self.assertRaisesRegex(ValueError, "names no config key"):
      split_overrides(["--config.=3"])


class ParseTest(parameterized.TestCase):

  @parameterized.parameters(
      (3, "5", 5), (1e-3, "3e-4", 3e-4), (True, "False", False), (True, "false", False), (False, "TRUE", True),
      ((0, 1), "(2, 7)", (2, 7)), (None, "2.0", 2.0), ("text", "(1, 2)", "(1, 2)"), ("", "", ""),
      ({"a": 1}, "{'widths': (4, 8)}", {"widths": (4, 8)}))
  def test_values_take_the_keys_type(self, current, text, want):
    self.assertEqual(parse_value(current, text), want)

  def test_a_non_literal_is_refused(self):
    with self.assertRaisesRegex(ValueError, r"'abc' is not a literal of the key's type \(float\)"):
      parse_value(1.0, "abc")


class ApplyTest(absltest.TestCase):

  def test_keys_of_every_depth(self):
    self.assertEqual(sorted(config_keys(small_config())),
                     ["classes", "clip", "flag", "lr", "model", "model.dim", "model.kwargs", "model.kwargs.widths",
                      "name", "steps"])

  def test_values_are_set_with_their_types(self):
    c = small_config()
    apply_overrides(c, {"name": "cub", "steps": "20", "lr": 0.5, "flag": "false", "classes": "(1, 9)",
                        "clip": "2.0", "model.dim": "16", "model.kwargs.widths": "(2, 3)"})
    self.assertEqual((c.name, c.steps, c.lr, c.flag, c.classes, c.clip, c.model.dim, c.model.kwargs.widths),
                     ("cub", 20, 0.5, False, (1, 9), 2.0, 16, (2, 3)))

  def test_a_whole_section_may_be_replaced(self):
    c = cub100.get_config()
    apply_overrides(c, {"model.backbone_kwargs": "{'widths': (4, 8), 'depth': 1}"})
    self.assertEqual(c.model.backbone_kwargs.to_dict(), {"widths": (4, 8), "depth": 1})

  def test_an_unknown_key_names_the_closest(self):
    with self.assertRaisesRegex(KeyError, r"unknown config key --config\.stpes; did you mean --config\.steps"):
      apply_overrides(small_config(), {"stpes": "3"})
    with self.assertRaisesRegex(KeyError, r"unknown config key --config\.zzz'"):
      apply_overrides(small_config(), {"zzz": "3"})

  def test_a_bad_value_names_its_key(self):
    with self.assertRaisesRegex(ValueError, r"^--config\.lr: 'fast' is not a literal"):
      apply_overrides(small_config(), {"lr": "fast"})


class StudyCommandLineTest(absltest.TestCase):

  def test_the_study_tools_refuse_a_bad_override_before_any_run(self):
    from experiments.studies import cub100_grid, cub100_tables

    for main, extra in ((cub100_grid.main, []), (cub100_tables.main, ["--table", "lr"])):
      for bad in ("--config.hdml.alfa=1", "--config.hdml.alpha=abc"):
        with self.assertRaises(SystemExit) as cm:
          main(["--workdir", tempfile.mkdtemp(), *extra, bad])
        self.assertEqual(cm.exception.code, 2)

  def test_the_table_tool_states_its_budget(self):
    from experiments.studies import cub100_tables

    with self.assertRaises(SystemExit):
      cub100_tables.main(["--help"])


if __name__ == "__main__":
  absltest.main()
