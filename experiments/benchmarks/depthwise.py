"""Benchmark: a depthwise convolution as XLA's grouped convolution, as shifted multiply-adds, and in PyTorch.

Times the forward pass and forward + backward (the gradient of a random linear function of the output, with
respect to the input and the kernel) of one depthwise convolution with ``SAME`` padding, in interleaved rounds;
reports the medians and the ratios to the grouped convolution (and to PyTorch's channels-last ``conv2d`` with
``groups=C`` where torch is installed; skipped with a message otherwise). Also the forward pass of the whole
EfficientNet-Lite0 backbone at the same batch, with either formulation.

    python -m experiments.benchmarks.depthwise --batch 32 --size 56 --channels 144 --kernel 3 --stride 1

``--max_pool`` times the inception modules' 3x3 stride-1 max pool instead (``nn.max_pool``, whose gradient is
XLA's ``select_and_scatter``, against :func:`hdml_jax.models.googlenet.max_pool_3x3`'s shifted comparisons, and
PyTorch's channels-last ``max_pool2d``), forward and forward + backward:

    python -m experiments.benchmarks.depthwise --max_pool --batch 32 --size 28 --channels 256

``--pointwise`` times a 1x1 stride-1 convolution: XLA's convolution against the matrix product the backbones
compute it as (:func:`hdml_jax.models.layers.conv_general_dilated`), and PyTorch's channels-last ``conv2d``:

    python -m experiments.benchmarks.depthwise --pointwise --batch 32 --size 28 --channels 256 --out_channels 128
"""

from __future__ import annotations

import json

import numpy as np

from experiments.benchmarks import harness


def _jax_cases(formulations, inputs: tuple, g) -> dict:
  """``{"<name>/forward": fn, "<name>/forward+backward": fn}`` for each ``(name, f)``: jitted, run once, the
  gradient taken of ``sum(g * f(*inputs))`` with respect to every input."""
  import jax
  import jax.numpy as jnp

  cases = {}
  for name, f in formulations:
    fwd = jax.jit(f)
    both = jax.jit(jax.grad(lambda *a, f=f: jnp.sum(g * f(*a)), argnums=tuple(range(len(inputs)))))
    jax.block_until_ready((fwd(*inputs), both(*inputs)))
    cases[f"{name}/forward"] = lambda fwd=fwd: jax.block_until_ready(fwd(*inputs))
    cases[f"{name}/forward+backward"] = lambda both=both: jax.block_until_ready(both(*inputs))
  return cases


def _channels_last(torch, a):
  """An NHWC array as a channels-last NCHW torch tensor."""
  return torch.from_numpy(np.array(a)).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def main(argv=None):
  import jax
  import jax.numpy as jnp

  from hdml_jax.models.efficientnet import depthwise_conv

  ap = harness.parser(__doc__, rounds=5, out="bench_depthwise.json")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--size", type=int, default=56)
  ap.add_argument("--channels", type=int, default=144)
  ap.add_argument("--kernel", type=int, default=3)
  ap.add_argument("--stride", type=int, default=1)
  ap.add_argument("--max_pool", action="store_true",
                  help="time the 3x3 stride-1 max pool (XLA's gradient, shifted comparisons, PyTorch) instead")
  ap.add_argument("--pointwise", action="store_true",
                  help="time a 1x1 convolution (XLA's, the product, PyTorch) instead, to --out_channels")
  ap.add_argument("--out_channels", type=int, default=128, help="--pointwise: the output channels")
  ap.add_argument("--network", action="store_true", help="also time EfficientNet-Lite0's forward pass at 224 px")
  args = harness.parse(ap, argv)
  if args.max_pool:
    return _max_pool(args)
  if args.pointwise:
    return _pointwise(args)
  b, s, c, k, st = args.batch, args.size, args.channels, args.kernel, args.stride
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(b, s, s, c)).astype(np.float32))
  w = jnp.asarray(rng.normal(size=(k, k, 1, c)).astype(np.float32))
  oh = -(-s // st)
  g = jnp.asarray(rng.normal(size=(b, oh, oh, c)).astype(np.float32))

  def grouped(x, w):
    return jax.lax.conv_general_dilated(x, w, (st, st), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=c)

  def shifted(x, w):
    return depthwise_conv(x, w, st)

  cases = _jax_cases((("xla_grouped", grouped), ("shifted", shifted)), (x, w), g)
  try:
    import torch

    tx, tg = _channels_last(torch, x), _channels_last(torch, g)
    tw = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).contiguous()
    pads = _tf_same(s, k, st)   # (left, right, top, bottom): TensorFlow's SAME, as the JAX side pads

    def torch_forward(requires_grad=False):
      xx = tx.detach().requires_grad_(requires_grad)
      ww = tw.detach().requires_grad_(requires_grad)
      out = torch.nn.functional.conv2d(torch.nn.functional.pad(xx, pads), ww, stride=st, groups=c)
      return xx, ww, out

    def torch_both():
      xx, ww, out = torch_forward(True)
      (out * tg).sum().backward()

    with torch.no_grad():
      torch_forward()
    torch_both()
    cases["pytorch/forward"] = lambda: torch.no_grad()(torch_forward)()
    cases["pytorch/forward+backward"] = torch_both
  except ImportError:
    print("torch is not installed: the PyTorch reference is skipped (pip install torch)")
  if args.network:
    from hdml_jax import models

    for name in ("shifted",):
      net = models.get_backbone("efficientnet_lite0")
      v = net.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
      images = jnp.asarray(rng.normal(size=(b, 224, 224, 3)).astype(np.float32))
      f = jax.jit(lambda v, x: net.apply(v, x, train=False))
      jax.block_until_ready(f(v, images))
      cases[f"efficientnet_lite0_{name}/forward"] = lambda f=f, v=v, images=images: jax.block_until_ready(
          f(v, images))
  _report(args, cases, "depthwise convolution", [b, s, s, c], "shifted", xla="xla_grouped",
          extra={"kernel": k, "stride": st})


def _max_pool(args) -> None:
  import flax.linen as nn
  import jax.numpy as jnp

  from hdml_jax.models.googlenet import max_pool_3x3

  b, s, c = args.batch, args.size, args.channels
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(b, s, s, c)).astype(np.float32))
  g = jnp.asarray(rng.normal(size=(b, s, s, c)).astype(np.float32))
  cases = _jax_cases((("xla", lambda x: nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))),
                      ("shifted", max_pool_3x3)), (x,), g)
  try:
    import torch

    tx, tg = _channels_last(torch, x), _channels_last(torch, g)

    def torch_both():
      xx = tx.detach().requires_grad_(True)
      (torch.nn.functional.max_pool2d(xx, 3, 1, 1) * tg).sum().backward()

    cases["pytorch/forward"] = lambda: torch.no_grad()(torch.nn.functional.max_pool2d)(tx, 3, 1, 1)
    cases["pytorch/forward+backward"] = torch_both
    torch_both()
  except ImportError:
    print("torch is not installed: the PyTorch reference is skipped (pip install torch)")
  _report(args, cases, "max_pool 3x3 stride 1", [b, s, s, c], "shifted")


def _report(args, cases, op: str, shape, ours: str, *, xla: str = "xla", extra: dict | None = None) -> None:
  """Times ``cases`` (``<xla>/...``, ``<ours>/...``, maybe ``pytorch/...`` and others) in interleaved rounds;
  prints and writes the medians and ratios (and ``extra``'s entries)."""
  times = harness.interleaved(args.rounds, {name: (lambda fn=fn: harness.timed(fn)) for name, fn in cases.items()})
  medians = {name: harness.median(t) for name, t in times.items()}
  kinds = ("forward", "forward+backward")
  out = {"op": op, "shape": shape, **(extra or {}), "rounds": args.rounds, "median_seconds": medians,
         "speedup_over_xla": {kind: medians[f"{xla}/{kind}"] / medians[f"{ours}/{kind}"] for kind in kinds}}
  if "pytorch/forward" in medians:
    out[f"{ours}_over_pytorch_time"] = {kind: medians[f"{ours}/{kind}"] / medians[f"pytorch/{kind}"]
                                        for kind in kinds}
  for name, m in medians.items():
    print(f"{name:40s} {m * 1e3:9.1f} ms")
  print(json.dumps(out, indent=1))
  harness.write_results(args.out, out)


def _pointwise(args) -> None:
  import jax
  import jax.numpy as jnp

  from hdml_jax.models.layers import conv_general_dilated

  b, s, c, d = args.batch, args.size, args.channels, args.out_channels
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(b, s, s, c)).astype(np.float32))
  w = jnp.asarray(rng.normal(size=(1, 1, c, d)).astype(np.float32))
  g = jnp.asarray(rng.normal(size=(b, s, s, d)).astype(np.float32))
  dims = ("NHWC", "HWIO", "NHWC")
  cases = _jax_cases([(name, lambda x, w, conv=conv: conv(x, w, (1, 1), "VALID", dimension_numbers=dims))
                      for name, conv in (("xla", jax.lax.conv_general_dilated), ("product", conv_general_dilated))],
                     (x, w), g)
  try:
    import torch

    tx, tg = _channels_last(torch, x), _channels_last(torch, g)
    tw = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).contiguous()

    def torch_both():
      xx, ww = tx.detach().requires_grad_(True), tw.detach().requires_grad_(True)
      (torch.nn.functional.conv2d(xx, ww) * tg).sum().backward()

    cases["pytorch/forward"] = lambda: torch.no_grad()(torch.nn.functional.conv2d)(tx, tw)
    cases["pytorch/forward+backward"] = torch_both
    torch_both()
  except ImportError:
    print("torch is not installed: the PyTorch reference is skipped (pip install torch)")
  _report(args, cases, "convolution 1x1 stride 1", [b, s, s, c, d], "product")


def _tf_same(size: int, kernel: int, stride: int):
  from hdml_jax.models.efficientnet import same_padding

  top, bottom = same_padding(size, kernel, stride)
  return (top, bottom, top, bottom)


def run():
  """Command-line entry point (``python3 -m experiments.benchmarks.depthwise``)."""
  from experiments.cli import run_main

  run_main(main, "python3 -m experiments.benchmarks.depthwise")


if __name__ == "__main__":
  run()
