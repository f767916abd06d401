"""Running the train step on many devices and hosts.

* Default, :func:`jit_train_step`: ``jax.jit`` over a 1-D ``('data',)``
  mesh; the batch is sharded along its first axis, the state replicated and
  donated. The step sees the *global* batch (global-batch semantics: the same
  losses, tuples and BatchNorm statistics as on one device).
* :func:`pmap_train_step`: the same step under ``jax.pmap`` (build it with
  ``make_train_step(..., axis_name=PMAP_AXIS)``); tuples are formed per
  device and gradients/statistics averaged. A thin wrapper: ``jax.pmap`` is
  in maintenance mode.
* Multi-host: call :func:`initialize_distributed` (``jax.distributed``)
  first; every process then builds the same global batch of indices and
  feeds only its own rows (:func:`process_rows`), assembled into one global
  array by :func:`shard_batch`; :class:`MeshPrefetcher` does that in a
  background thread, a few batches ahead of the step.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "PMAP_AXIS",
    "MeshPrefetcher",
    "data_sharded",
    "initialize_distributed",
    "jit_train_step",
    "make_data_mesh",
    "pmap_train_step",
    "process_rows",
    "replicate_for_pmap",
    "replicate_state",
    "replicated",
    "shard_batch",
    "split_for_devices",
    "unreplicate",
]


#: The data mesh's one axis, over which batches are sharded.
DATA_AXIS = "data"
#: The axis name of the pmapped step (gradients and statistics are averaged over it).
PMAP_AXIS = "devices"


def make_data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named ``('data',)`` over ``devices`` (default: all, all hosts)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of an array held whole on every device of ``mesh`` (the train state)."""
  return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """The sharding of a batch split along its leading axis over the mesh's ``data`` axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def jit_train_step(step, mesh: Mesh, *, donate: bool = True):
  """``jax.jit`` of a ``(state, batch, rng)`` step with mesh shardings."""
  rep, dat = replicated(mesh), data_sharded(mesh)
  return jax.jit(
      step,
      in_shardings=(rep, dat, rep),
      out_shardings=(rep, rep),
      donate_argnums=(0,) if donate else (),
  )


def replicate_state(state: Any, mesh: Mesh) -> Any:
  """Places every leaf of ``state`` on all devices of ``mesh``."""
  return jax.device_put(state, replicated(mesh))


def _check_divisible(batch_size: int, n: int, what: str):
  if batch_size % n:
    raise ValueError(f"{what}: the batch size {batch_size} is not divisible by {n}.")


def process_rows(global_batch_size: int) -> slice:
  """The contiguous rows of the global batch that this process feeds."""
  n = jax.process_count()
  _check_divisible(global_batch_size, n, "process_rows (process count)")
  per = global_batch_size // n
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def shard_batch(batch: dict, mesh: Mesh, *, global_batch_size: int | None = None) -> dict:
  """Host arrays -> global ``jax.Array``s sharded along ``'data'``.

  With one process, ``batch`` is the whole global batch. With several,
  ``batch`` holds this process's rows (:func:`process_rows`) and
  ``global_batch_size`` the total.
  """
  sharding = data_sharded(mesh)
  if jax.process_count() == 1:
    for v in jax.tree_util.tree_leaves(batch):
      _check_divisible(v.shape[0], mesh.size, "shard_batch (devices)")
    return jax.device_put(batch, sharding)
  if global_batch_size is None:
    raise ValueError("shard_batch: global_batch_size is required with several processes.")
  _check_divisible(global_batch_size, mesh.size, "shard_batch (devices)")

  def make(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, (global_batch_size,) + x.shape[1:])

  return jax.tree_util.tree_map(make, batch)


class MeshPrefetcher:
  """Iterator of :func:`shard_batch`-ed batches, transferred ahead in a thread.

  ``size`` host batches are taken from ``batches`` and put on the mesh ahead of
  the consumer, so the transfer overlaps the previous steps' compute. An
  exception raised by ``batches`` (or by the transfer) is raised again by
  ``next`` with its original traceback, after the batches before it. Call
  :meth:`close` (or use it as a context manager) to stop the thread early.

  >>> mesh = make_data_mesh(jax.devices()[:1])
  >>> with MeshPrefetcher(({"x": np.full((2, 3), i)} for i in range(3)), mesh) as it:
  ...   [int(b["x"][0, 0]) for b in it]
  [0, 1, 2]
  """

  _END = object()

  def __init__(self, batches: Iterable[dict], mesh: Mesh, *, size: int = 2,
               global_batch_size: int | None = None):
    if size < 1:
      raise ValueError(f"MeshPrefetcher: size must be >= 1, got {size}.")
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._done = False

    def work():
      try:
        for batch in batches:
          if not self._put(shard_batch(batch, mesh, global_batch_size=global_batch_size)):
            return
        self._put(self._END)
      except BaseException as e:  # handed to the consumer, raised there
        self._put(e)

    self._thread = threading.Thread(target=work, name="MeshPrefetcher", daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    """Waits for room in the queue; False if :meth:`close` was called meanwhile."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._done:
      raise StopIteration
    item = self._queue.get()
    if item is self._END:
      self._done = True
      raise StopIteration
    if isinstance(item, BaseException):
      self._done = True
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    self._thread.join()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def initialize_distributed(coordinator_address: str, num_processes: int, process_id: int, **kwargs):
  """Starts ``jax.distributed`` (call before any other JAX work)."""
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id, **kwargs)


# --- pmap ------------------------------------------------------------------


def pmap_train_step(step, *, axis_name: str = PMAP_AXIS, donate: bool = True):
  """``jax.pmap`` of a step built with ``make_train_step(..., axis_name=axis_name)``."""
  return jax.pmap(step, axis_name=axis_name, donate_argnums=(0,) if donate else ())


def split_for_devices(batch: dict, num_devices: int, *, groups: int) -> dict:
  """Splits a tuple-structured batch into ``[num_devices, B/num_devices, ...]``.

  ``groups`` is 2 for ``[anchors; positives]`` and 3 for
  ``[anchors; positives; negatives]``: each device receives matching rows of
  every group, so its sub-batch keeps the same layout.
  """

  def split(x):
    x = np.asarray(x)
    b = x.shape[0]
    _check_divisible(b, groups * num_devices, "split_for_devices")
    per = b // (groups * num_devices)
    x = x.reshape((groups, num_devices, per) + x.shape[1:])
    x = np.swapaxes(x, 0, 1)
    return x.reshape((num_devices, groups * per) + x.shape[3:])

  return jax.tree_util.tree_map(split, batch)


def replicate_for_pmap(tree: Any, devices: Sequence[jax.Device] | None = None) -> Any:
  """Stacks one copy of ``tree`` per device along a new leading axis."""
  devices = list(jax.local_devices() if devices is None else devices)
  sharding = NamedSharding(Mesh(np.asarray(devices), (PMAP_AXIS,)), PartitionSpec(PMAP_AXIS))

  def put(x):
    x = np.asarray(jax.device_get(x))
    return jax.device_put(np.broadcast_to(x, (len(devices),) + x.shape), sharding)

  return jax.tree_util.tree_map(put, tree)


def unreplicate(tree: Any) -> Any:
  """The first replica of a pmapped pytree."""
  return jax.tree_util.tree_map(lambda x: x[0], tree)
