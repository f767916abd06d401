"""Benchmark: a whole network's train step in JAX against the same step in PyTorch, side by side.

For each network of ``--networks`` (``googlenet_bn``: torchvision's GoogLeNet layout, BatchNorm, no LRN;
``efficientnet_lite0``), at ``--batch`` and ``--image_size``:

* ``jax``: :func:`hdml_jax.train_step.make_train_step` of the N-pair baseline (``HDMLConfig(loss="npair",
  hdml=False)``: the backbone in training mode, the embedding layer, the N-pair loss and its L2 term, Adam),
  jitted with the state donated;
* ``pytorch``: the same backbone in PyTorch (channels-last, training mode), a linear embedding, the N-pair loss
  (softmax cross-entropy over anchor-positive similarities) and Adam. GoogLeNet is written here in torchvision's
  layout (``BasicConv2d``: convolution without bias, BatchNorm with eps 1e-3, ReLU; the "5x5" branch a 3x3
  convolution; ceil-mode pools); EfficientNet-Lite0 is the ``efficientnet-lite-pytorch`` package's.

Each variant runs in a fresh process of its own (one process holding both libraries slows XLA's threads: the
PyTorch thread pool's waiting threads take the cores; EfficientNet-Lite0's JAX step measured 4.0 s alone and
5.9-6.5 s beside PyTorch), once per round, in interleaved rounds: it builds and compiles the step, runs one
step (reported as the first step: compilation and warm-up), then times ``--steps_per_round`` steps. The
medians over rounds, images per second and the ratio JAX / PyTorch images per second (at least 1.0 is the goal)
are reported. Both use every core (``torch.set_num_threads(os.cpu_count())``; XLA's CPU backend does by
default). Without torch the PyTorch side is skipped with a message. ``--other_checkout DIR`` adds the JAX side of
another checkout (its library, this file) to every round.

    python -m experiments.benchmarks.network_step --networks googlenet_bn,efficientnet_lite0 \\
        --batch 32 --image_size 224 --steps_per_round 2 --rounds 3
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np

from experiments.benchmarks import harness

NETWORKS = ("googlenet_bn", "efficientnet_lite0")
#: The inception blocks' widths (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection) and the stages.
_SPECS = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), (192, 96, 208, 16, 48, 64),
          (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64), (112, 144, 288, 32, 64, 64),
          (256, 160, 320, 32, 128, 128), (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)]


def _labels(batch: int) -> np.ndarray:
  p = batch // 2
  return np.concatenate([np.arange(p), np.arange(p)]).astype(np.int32)


def _jax_step(name: str, batch: int, size: int, embedding_dim: int):
  """A callable running one JAX step (the state carried over calls), after one compiling call."""
  import jax

  from hdml_jax.config import HDMLConfig, OptimizerConfig
  from hdml_jax.train_state import create_train_state
  from hdml_jax.train_step import make_train_step

  config = HDMLConfig(loss="npair", hdml=False)
  state = create_train_state(jax.random.key(0), image_shape=(size, size, 3), num_classes=batch,
                             embedding_dim=embedding_dim, backbone=name, config=config, optimizer=OptimizerConfig())
  step = jax.jit(make_train_step(state.networks, config), donate_argnums=0)
  rng = np.random.default_rng(0)
  b = {"images": jax.device_put(rng.normal(size=(batch, size, size, 3)).astype(np.float32)),
       "labels": jax.device_put(_labels(batch))}
  holder = {"state": state}

  def run():
    holder["state"], m = step(holder["state"], b, jax.random.key(0))
    jax.block_until_ready(m)

  t0 = time.perf_counter()
  run()
  return run, time.perf_counter() - t0


def _torch_googlenet(torch):
  nn = torch.nn

  class BasicConv(nn.Module):
    def __init__(self, cin, cout, k, stride=1, pad=0):
      super().__init__()
      self.conv = nn.Conv2d(cin, cout, k, stride, pad, bias=False)
      self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
      return torch.relu(self.bn(self.conv(x)))

  class Inception(nn.Module):
    def __init__(self, cin, spec):
      super().__init__()
      c1, c3r, c3, c5r, c5, pp = spec
      self.b1 = BasicConv(cin, c1, 1)
      self.b2 = nn.Sequential(BasicConv(cin, c3r, 1), BasicConv(c3r, c3, 3, pad=1))
      self.b3 = nn.Sequential(BasicConv(cin, c5r, 1), BasicConv(c5r, c5, 3, pad=1))
      self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv(cin, pp, 1))

    def forward(self, x):
      return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)

  layers = [BasicConv(3, 64, 7, 2, 3), nn.MaxPool2d(3, 2, ceil_mode=True), BasicConv(64, 64, 1),
            BasicConv(64, 192, 3, pad=1), nn.MaxPool2d(3, 2, ceil_mode=True)]
  cin = 192
  for i, spec in enumerate(_SPECS):
    layers.append(Inception(cin, spec))
    cin = spec[0] + spec[2] + spec[4] + spec[5]
    if i == 1:
      layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
    elif i == 6:
      layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
  return nn.Sequential(*layers), cin


def _torch_step(name: str, batch: int, size: int, embedding_dim: int):
  """A callable running one PyTorch step, after one warm-up call."""
  import torch

  torch.manual_seed(0)
  if name == "googlenet_bn":
    backbone, features = _torch_googlenet(torch)
  else:
    from efficientnet_lite_pytorch import EfficientNet

    backbone = EfficientNet.from_name(name.replace("_", "-"))
    features = backbone._fc.in_features
    backbone._fc = torch.nn.Identity()
  model = torch.nn.Sequential(backbone, torch.nn.Linear(features, embedding_dim))
  model = model.to(memory_format=torch.channels_last).train()
  opt = torch.optim.Adam(model.parameters(), lr=1e-4)
  rng = np.random.default_rng(0)
  x = torch.from_numpy(rng.normal(size=(batch, 3, size, size)).astype(np.float32)).contiguous(
      memory_format=torch.channels_last)
  p = batch // 2
  target = torch.arange(p)

  def run():
    opt.zero_grad(set_to_none=True)
    e = model(x)
    anchors, positives = e[:p], e[p:]
    loss = torch.nn.functional.cross_entropy(anchors @ positives.T, target) + 2e-3 * (e * e).sum(1).mean()
    loss.backward()
    opt.step()

  t0 = time.perf_counter()
  run()
  return run, time.perf_counter() - t0


def _child(spec: str, args) -> dict:
  """One round of one variant in this (fresh) process: ``{"first": s, "step": s}``."""
  name, side = spec.split(":")
  if side == "pytorch":
    import torch

    torch.set_num_threads(os.cpu_count())
  run, first = (_jax_step if side == "jax" else _torch_step)(name, args.batch, args.image_size, args.embedding_dim)
  t0 = time.perf_counter()
  for _ in range(args.steps_per_round):
    run()
  return {"first": first, "step": (time.perf_counter() - t0) / args.steps_per_round}


def main(argv=None):
  ap = harness.parser(__doc__, rounds=3, out="bench_network_step.json", other_checkout=True)
  ap.add_argument("--networks", default=",".join(NETWORKS))
  ap.add_argument("--batch", type=int, default=32, help="an even batch (N-pair: anchors then positives)")
  ap.add_argument("--image_size", type=int, default=224)
  ap.add_argument("--embedding_dim", type=int, default=512)
  ap.add_argument("--steps_per_round", type=int, default=2)
  args = harness.parse(ap, argv)
  if args._child:
    harness.child_result(_child(args._child, args))
    return
  networks = args.networks.split(",")
  if not networks or set(networks) - set(NETWORKS):
    ap.error(f"--networks must name some of {', '.join(NETWORKS)}, got {args.networks!r}")
  if args.batch < 2 or args.batch % 2:
    ap.error(f"--batch must be even and at least 2 (N-pair), got {args.batch}")
  import importlib.util

  torch_here = importlib.util.find_spec("torch") is not None
  if not torch_here:
    print("torch is not installed: the PyTorch reference is skipped (pip install torch efficientnet-lite-pytorch)")
  checkouts = harness.checkouts(args.other_checkout)
  child = ["--batch", str(args.batch), "--image_size", str(args.image_size), "--embedding_dim",
           str(args.embedding_dim), "--steps_per_round", str(args.steps_per_round)]
  cases = {}
  for name in networks:
    for checkout, path in checkouts.items():
      key = f"{name}/jax" + ("" if checkout == "this" else f"/{checkout}")
      cases[key] = lambda path=path, name=name: harness.in_fresh_process(path, __file__, [f"{name}:jax", *child])
    if torch_here:
      cases[f"{name}/pytorch"] = lambda name=name: harness.in_fresh_process(harness.REPO, __file__,
                                                                            [f"{name}:pytorch", *child])
  rounds = harness.interleaved(args.rounds, cases, lambda r, k, v: print(
      f"round {r}: {k} {v['step']:.2f} s a step (first step {v['first']:.1f} s)", flush=True))
  import jax

  torch_version = None
  if torch_here:
    import torch

    torch_version = torch.__version__
  results = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "jax": jax.__version__,
             "torch": torch_version, "checkouts": checkouts,
             "args": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "variants": {},
             "jax_over_pytorch": {}}
  print(f"\n{'variant':<34}{'first s':>9}{'step s':>9}{'img/s':>8}")
  for k, values in rounds.items():
    med = harness.median([v["step"] for v in values])
    first = harness.median([v["first"] for v in values])
    results["variants"][k] = {"first_step_s": first, "step_s_median": med, "step_s_all": [v["step"] for v in values],
                              "images_per_s": args.batch / med}
    print(f"{k:<34}{first:>9.1f}{med:>9.2f}{args.batch / med:>8.1f}")
  for k in rounds:
    name = k.split("/")[0]
    if "/jax" in k and f"{name}/pytorch" in rounds:
      ratio = results["variants"][k]["images_per_s"] / results["variants"][f"{name}/pytorch"]["images_per_s"]
      results["jax_over_pytorch"][k] = ratio
      print(f"{k}: JAX / PyTorch images per second = {ratio:.2f}")
  harness.write_results(args.out, results)


if __name__ == "__main__":
  from experiments.cli import run_main

  run_main(main, "python3 -m experiments.benchmarks.network_step")
