"""What a run sets up before its loop: the runtime, the mesh, the state (fresh or resumed), the step.

:func:`prepare_run` is the set-up sequence that ``experiments.train`` and
``experiments.pretrain`` share: validate the config, start the runtime, load
the data, build the mesh and the template state, open the checkpoints, check
the saved config, resume, replicate, and build the jitted step, the batches,
the key and the metric writer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import jax
import ml_collections

from experiments import checkpoints, datasets, logs, run_config
from experiments.config_mapping import hdml_config, optimizer_config
from hdml_jax import losses, parallel, weights
from hdml_jax.losses import init_loss_params
from hdml_jax.models import registry
from hdml_jax.train_state import create_train_state
from hdml_jax.weights import file_sha256

__all__ = ["WEIGHTS_CACHE", "Run", "build_state", "file_sha256", "pretrained_path", "jit_step_with_rng", "local_copy", "make_mesh", "prepare_run",
           "resume", "setup_runtime"]

WEIGHTS_CACHE = "~/.cache/hdml_jax/weights"


def pretrained_path(spec: str) -> str:
  """The file ``model.pretrained`` names: a path, or a weight source's name (converted once into
  ``WEIGHTS_CACHE/<source>-<input sha256[:16]>.npz``)."""
  path = os.path.expanduser(spec)
  if os.path.exists(path) or spec not in registry.weight_sources():
    return path
  source = registry.get_weight_source(spec)
  located = source.locate() if source.locate is not None else None
  if located is None:
    raise ValueError(f"model.pretrained={spec!r} names a weight source that needs an input file: convert it with "
                     "experiments.convert_weights and name the output.")
  out = os.path.join(os.path.expanduser(WEIGHTS_CACHE), f"{spec}-{file_sha256(located)[:16]}.npz")
  if not os.path.exists(out):
    variables, meta = registry.convert_weight_source(spec, located)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    weights.save_variables(out, variables, meta=meta)
  return out


def build_state(cfg, data: datasets.Data):
  state = _fresh_state(cfg, data)
  if cfg.model.pretrained:
    # A backbone that continues from cached activations (features.backbone_kwargs) is a part of the file's.
    state = weights.load_pretrained_backbone(state, pretrained_path(cfg.model.pretrained),
                                             expect=run_config.backbone_identity(cfg, data.image_shape),
                                             part=bool(cfg.features.backbone_kwargs.to_dict()))
  return state

def _fresh_state(cfg, data: datasets.Data):
  loss_params = None
  if cfg.loss.name in losses.PROXY_LOSSES:   # the loss's own parameters (proxies) join the state
    loss_params = init_loss_params(cfg.loss.name, jax.random.fold_in(jax.random.key(cfg.seed), 1),
                                   embedding_dim=cfg.model.embedding_dim, num_classes=data.train.num_classes)
  memory = None
  if cfg.loss.xbm_size:          # a label-based loss with a cross-batch memory
    memory = losses.init_memory(cfg.loss.xbm_size, cfg.model.embedding_dim)
  return create_train_state(
      jax.random.key(cfg.seed), image_shape=data.image_shape, num_classes=data.train.num_classes,
      embedding_dim=cfg.model.embedding_dim, backbone=cfg.model.backbone,
      backbone_kwargs=cfg.model.backbone_kwargs.to_dict(), generator_hidden=cfg.model.generator_hidden,
      config=hdml_config(cfg), optimizer=optimizer_config(cfg),
      stats_block_length=cfg.hdml.stats_block_length, stats_initial_value=cfg.hdml.stats_initial_value,
      loss_params=loss_params, memory=memory)

def setup_runtime(cfg) -> None:
  """Multi-host start and the persistent compilation cache (call once, first)."""
  if cfg.distributed.coordinator_address and not getattr(setup_runtime, "_distributed", False):
    parallel.initialize_distributed(cfg.distributed.coordinator_address,
                                    cfg.distributed.num_processes, cfg.distributed.process_id)
    setup_runtime._distributed = True
  if cfg.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cfg.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

def local_copy(tree):
  """Host copy of a replicated pytree (works on every process of a multi-host run).

  One ``jax.device_get`` for the whole tree, so its transfers overlap.
  """
  return jax.device_get(jax.tree_util.tree_map(
      lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree))

def make_mesh(cfg):
  """The ('data',) mesh over ``config.num_devices`` devices (0: all)."""
  present = jax.devices()
  if cfg.num_devices < 0 or cfg.num_devices > len(present):
    raise ValueError(f"config.num_devices={cfg.num_devices}, but {len(present)} {present[0].platform} "
                     f"device(s) are present: use 0 (all) or 1..{len(present)}.")
  devices = present if not cfg.num_devices else present[:cfg.num_devices]
  if cfg.batch_size % len(devices):
    raise ValueError(f"config.batch_size={cfg.batch_size} is not divisible by the {len(devices)} devices.")
  return parallel.make_data_mesh(devices), devices

def resume(ckpt, template, workdir: str):
  """``(state, last finite checkpoint step or None)``: the newest finite checkpoint, else ``template``."""
  state, skipped = checkpoints.restore_latest_finite(ckpt, template)
  for step, leaves in skipped:
    logging.warning("checkpoint %d in %s holds non-finite values (%s); deleted, resuming from an "
                    "earlier finite one", step, workdir, ", ".join(leaves[:3]))
  if state is None:
    return template, None
  logging.info("resumed from step %d in %s", int(state.step), workdir)
  return state, int(state.step)

def jit_step_with_rng(train_step, mesh, normalize=None):
  """``(state, batch, key) -> (state, metrics)`` jitted over ``mesh``.

  The step's rng is ``fold_in(key, state.step)``, derived on the device (a
  separate host call would cost a dispatch every step). ``normalize``
  (``datasets.Data.normalize``): the batch's ``uint8`` images become the
  model's input inside the step, on the device.
  """
  def step_at(state, batch, key):
    if normalize is not None:
      batch = {**batch, "images": normalize(batch["images"])}
    return train_step(state, batch, jax.random.fold_in(key, state.step))

  return parallel.jit_train_step(step_at, mesh)


@dataclasses.dataclass
class Run:
  """Everything :func:`prepare_run` sets up (the loop's arguments among them)."""

  data: datasets.Data
  mesh: Any
  devices: list
  template: Any
  ckpt: Any
  changes: list
  state: Any
  last_finite: int | None
  step_fn: Callable
  batches: Any
  key: jax.Array
  writer: logs.MetricWriter
  is_main: bool


def prepare_run(cfg: ml_collections.ConfigDict, workdir: str, *, make_template: Callable, make_step: Callable,
                before_resume: Callable | None = None) -> Run:
  """The shared set-up of a training run in ``workdir``.

  Args:
    cfg: the run's config (validated here).
    workdir: created if needed; its checkpoints are resumed.
    make_template: ``(cfg, data) -> state``, the fresh state (and the
      template checkpoints are restored into).
    make_step: ``(state) -> step``, the train step
      ``(state, batch, rng) -> (state, metrics)`` for this state (it may
      read the state's static fields: modules, hyper-parameters).
    before_resume: ``(ckpt) -> None``, called once the checkpoint manager
      is open, before the saved config is checked (``BestCheckpoint`` opens
      its own manager there).
  """
  run_config.validate_config(cfg)
  setup_runtime(cfg)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  data = datasets.load_data(cfg)
  mesh, devices = make_mesh(cfg)
  template = make_template(cfg, data)
  ckpt = checkpoints.make_manager(os.path.join(workdir, "checkpoints"), max_to_keep=cfg.keep_checkpoints)
  if before_resume is not None:
    before_resume(ckpt)
  changes = run_config.check_run_config(cfg, workdir, resuming=bool(ckpt.all_steps()))
  state, last_finite = resume(ckpt, template, workdir)
  start = int(state.step)
  state = parallel.replicate_state(state, mesh)
  step_fn = jit_step_with_rng(make_step(state), mesh, normalize=data.normalize)
  batches = parallel.MeshPrefetcher(
      datasets.train_batches(cfg, data, start_step=start, rows=parallel.process_rows(cfg.batch_size)),
      mesh, size=2, global_batch_size=cfg.batch_size)
  key = jax.device_put(jax.random.key(cfg.seed), parallel.replicated(mesh))
  writer = logs.MetricWriter(workdir, enabled=is_main, resume_step=start)
  return Run(data=data, mesh=mesh, devices=devices, template=template, ckpt=ckpt, changes=changes, state=state,
             last_finite=last_finite, step_fn=step_fn, batches=batches, key=key, writer=writer,
             is_main=is_main)
