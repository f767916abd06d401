"""One declaration per hyper-parameter: the config sections are the library dataclasses' fields."""

import dataclasses
from typing import Optional, Sequence

import ml_collections
from absl.testing import absltest

from experiments.config_mapping import HDML_KEYS, config_section, from_section, hdml_config, optimizer_config
from experiments.configs import base, cub100, default, paper
from hdml_jax.config import HDMLConfig, OptimizerConfig


@dataclasses.dataclass(frozen=True)
class Toy:
  rate: float = 0.5
  steps: Sequence[int] = (1, 2)
  clip: Optional[float] = None
  new_knob: int = 7          # a field added to the dataclass appears in the config by itself


class MappingTest(absltest.TestCase):

  def test_a_section_holds_every_field_with_its_default(self):
    section = config_section(Toy)
    self.assertEqual(sorted(section.keys()), ["clip", "new_knob", "rate", "steps"])
    self.assertEqual((section.rate, section.steps, section.new_knob), (0.5, (1, 2), 7))
    self.assertIsNone(section.clip)
    section.clip = 2.0      # a typed placeholder
    with self.assertRaises(TypeError):
      section.clip = "two"
    self.assertEqual(from_section(Toy, section), Toy(clip=2.0))

  def test_renames_and_missing_keys(self):
    section = config_section(HDMLConfig, renames=HDML_KEYS)
    self.assertIn("enabled", section)
    self.assertNotIn("hdml", section)
    section.enabled = False
    self.assertFalse(from_section(HDMLConfig, section, renames=HDML_KEYS).hdml)
    del section["margin"]
    with self.assertRaisesRegex(KeyError, r"config\.hdml\.margin is missing: HDMLConfig\.margin is read from it"):
      from_section(HDMLConfig, section, renames=HDML_KEYS, where="config.hdml")

  def test_a_field_without_default_or_single_type_is_refused(self):
    @dataclasses.dataclass
    class NoDefault:
      x: int

    @dataclasses.dataclass
    class Ambiguous:
      x: "int | float | None" = None

    with self.assertRaisesRegex(ValueError, "NoDefault.x has no default"):
      config_section(NoDefault)
    with self.assertRaisesRegex(ValueError, "Ambiguous.x defaults to None"):
      config_section(Ambiguous)

  def test_the_base_config_is_the_dataclasses_defaults(self):
    cfg = base.get_base_config()
    self.assertEqual(hdml_config(cfg), HDMLConfig())
    self.assertEqual(optimizer_config(cfg), OptimizerConfig())
    library_keys = set(config_section(HDMLConfig, renames=HDML_KEYS).keys())
    self.assertEqual(set(cfg.hdml.keys()) - library_keys, {"stats_block_length", "stats_initial_value"})
    self.assertEqual(set(cfg.optimizer.keys()), {f.name for f in dataclasses.fields(OptimizerConfig)})

  def test_every_config_file_maps_to_valid_dataclasses(self):
    for cfg in (default.get_config(), cub100.get_config(), paper.get_config("sop,triplet,baseline")):
      h, o = hdml_config(cfg), optimizer_config(cfg)
      self.assertEqual(h.loss, cfg.loss.name)
      self.assertNotIn("loss", cfg.hdml)   # one key names the loss
      self.assertEqual(h.hdml, cfg.hdml.enabled)
      self.assertEqual(o.metric_boundaries, tuple(cfg.optimizer.metric_boundaries))
    self.assertEqual(optimizer_config(paper.get_config("sop,npair,hdml")).clip_value, 2.0)

  def test_lists_read_back_as_tuples(self):
    section = ml_collections.ConfigDict({"rate": 1.0, "steps": [3, 4], "clip": None, "new_knob": 1})
    self.assertEqual(from_section(Toy, section).steps, (3, 4))


if __name__ == "__main__":
  absltest.main()
