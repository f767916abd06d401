"""Benchmark: a depthwise convolution as XLA's grouped convolution, as shifted multiply-adds, and in PyTorch.

Times the forward pass and forward + backward (the gradient of a random linear function of the output, with
respect to the input and the kernel) of one depthwise convolution with ``SAME`` padding, in interleaved rounds;
reports the medians and the ratios to the grouped convolution (and to PyTorch's channels-last ``conv2d`` with
``groups=C`` where torch is installed; skipped with a message otherwise). Also the forward pass of the whole
EfficientNet-Lite0 backbone at the same batch, with either formulation.

    python -m experiments.benchmarks.depthwise --batch 32 --size 56 --channels 144 --kernel 3 --stride 1
"""

from __future__ import annotations

import json

import numpy as np

from experiments.benchmarks import harness


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
  ap.add_argument("--network", action="store_true", help="also time EfficientNet-Lite0's forward pass at 224 px")
  args = harness.parse(ap, argv)
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

  cases = {}
  for name, f in (("xla_grouped", grouped), ("shifted", shifted)):
    fwd = jax.jit(f)
    both = jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(g * f(x, w)), argnums=(0, 1)))
    jax.block_until_ready(fwd(x, w))
    jax.block_until_ready(both(x, w))
    cases[f"{name}/forward"] = lambda fwd=fwd: jax.block_until_ready(fwd(x, w))
    cases[f"{name}/forward+backward"] = lambda both=both: jax.block_until_ready(both(x, w))
  try:
    import torch

    tx = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    tw = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).contiguous()
    tg = torch.from_numpy(np.array(g)).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
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
  times = harness.interleaved(args.rounds, {name: (lambda fn=fn: harness.timed(fn)) for name, fn in cases.items()})
  medians = {name: harness.median(t) for name, t in times.items()}
  out = {"shape": [b, s, s, c], "kernel": k, "stride": st, "rounds": args.rounds, "median_seconds": medians,
         "speedup_over_xla": {kind: medians[f"xla_grouped/{kind}"] / medians[f"shifted/{kind}"]
                              for kind in ("forward", "forward+backward")}}
  if "pytorch/forward" in medians:
    out["shifted_over_pytorch_time"] = {kind: medians[f"shifted/{kind}"] / medians[f"pytorch/{kind}"]
                                        for kind in ("forward", "forward+backward")}
  for name, m in medians.items():
    print(f"{name:40s} {m * 1e3:9.1f} ms")
  print(json.dumps(out, indent=1))
  harness.write_results(args.out, out)


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
