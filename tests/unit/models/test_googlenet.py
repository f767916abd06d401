import os
import tempfile

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from scipy.signal import correlate

from hdml_jax import weights
from hdml_jax.models import get_backbone, registry
from hdml_jax.models.googlenet import Inception, lrn
from tests.helpers.library import numeric_grad, tiny_state


def _init(name, size, seed=0, **kw):
  net = get_backbone(name, **kw)
  x = jnp.zeros((1, size, size, 3))
  return net, jax.jit(lambda: net.init(jax.random.key(seed), x, train=False))()


def _perturb_stats(variables, seed=1):
  rng = np.random.default_rng(seed)
  stats = jax.tree_util.tree_map(lambda v: rng.uniform(0.5, 1.5, v.shape).astype(np.float32),
                                 variables["batch_stats"])
  return {"params": variables["params"], "batch_stats": stats}


def _same(a, b):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (p, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(p))


def reference_stem(image_hwc, kernel_oihw, bias, mode):
  """conv1 (7x7, stride 2, pad 3) + ReLU, ceil-mode 3x3/2 max pool, LRN: NumPy/SciPy loops."""
  x = np.pad(image_hwc.astype(np.float64), ((3, 3), (3, 3), (0, 0)))
  out_c = kernel_oihw.shape[0]
  full = np.stack([
      sum(correlate(x[:, :, i], kernel_oihw[o, i], mode="valid") for i in range(x.shape[2])) + bias[o]
      for o in range(out_c)], axis=-1)
  conv = np.maximum(full[::2, ::2], 0.0)
  h, w, _ = conv.shape
  oh, ow = -(-(h - 3) // 2) + 1, -(-(w - 3) // 2) + 1   # Caffe ceil mode
  pooled = np.zeros((oh, ow, out_c))
  for i in range(oh):
    for j in range(ow):
      pooled[i, j] = conv[2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(0, 1))   # clipped window
  radius, alpha = (5, 1e-4) if mode == "tf" else (2, 1e-4 / 5)
  normed = np.zeros_like(pooled)
  for c in range(out_c):
    lo, hi = max(0, c - radius), min(out_c, c + radius + 1)
    normed[..., c] = pooled[..., c] / (1.0 + alpha * np.sum(pooled[..., lo:hi] ** 2, axis=-1)) ** 0.75
  return normed


class GoogLeNetTest(chex.TestCase):

  # googlenet at 227 is covered by test_reference_spatial_sizes_at_227.
  @parameterized.parameters(("googlenet", 224), ("googlenet_bn", 227), ("googlenet_bn", 224))
  @pytest.mark.slow
  def test_output_shapes(self, name, size):
    net, variables = _init(name, size)
    y = jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, jnp.ones((2, size, size, 3)))
    chex.assert_shape(y, (2, 1024))
    chex.assert_tree_all_finite(y)

  @pytest.mark.slow
  def test_reference_spatial_sizes_at_227(self):
    net, variables = _init("googlenet", 227)
    y, inter = jax.jit(lambda v, x: net.apply(v, x, train=False, capture_intermediates=True))(
        variables, jnp.ones((2, 227, 227, 3)))
    chex.assert_shape(y, (2, 1024))
    inter = inter["intermediates"]
    sizes = [inter[m]["__call__"][0].shape[1] for m in ("conv1", "pool1", "pool2", "pool3", "pool4")]
    self.assertEqual(sizes, [114, 57, 28, 14, 7])
    self.assertEqual(inter["inception_5b"]["__call__"][0].shape, (2, 7, 7, 1024))
    n = sum(p.size for p in jax.tree_util.tree_leaves(variables["params"]))
    self.assertEqual(n, 5973552)   # Caffe GoogLeNet without its auxiliary heads and classifier

  @parameterized.parameters("tf", "caffe")
  @pytest.mark.slow
  def test_stem_against_numpy_scipy_reference(self, mode):
    net, variables = _init("googlenet", 37, lrn=mode)
    rng = np.random.default_rng(0)
    kernel_oihw = rng.normal(size=(64, 3, 7, 7)).astype(np.float32) * 0.1
    bias = rng.normal(size=64).astype(np.float32)
    blobs = weights.params_to_caffe_blobs(variables["params"])
    blobs["conv1/7x7_s2"], blobs["conv1/7x7_s2_bias"] = kernel_oihw, bias
    params = weights.caffe_blobs_to_params(blobs, variables["params"])
    image = rng.uniform(-100, 100, size=(37, 37, 3)).astype(np.float32)
    _, inter = net.apply({"params": params}, image[None], train=False, capture_intermediates=True)
    got = np.asarray(inter["intermediates"]["pool1"]["__call__"][0][0])
    want = reference_stem(image, kernel_oihw, bias, mode)
    self.assertEqual(got.shape, want.shape)   # 37 -> 19 -> 10
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-3)
    self.assertGreater(np.abs(want).max(), 1.0)   # a real signal, not all zeros

  @pytest.mark.slow
  def test_bfloat16_compute_keeps_float32_params_and_output(self):
    net32, variables = _init("googlenet", 67)
    net16 = get_backbone("googlenet", dtype=jnp.bfloat16)
    x = jnp.asarray(np.random.default_rng(2).uniform(-50, 50, (1, 67, 67, 3)), jnp.float32)
    y32 = jax.jit(lambda v, x: net32.apply(v, x, train=False))(variables, x)
    y16 = jax.jit(lambda v, x: net16.apply(v, x, train=False))(variables, x)
    self.assertEqual(y16.dtype, jnp.float32)
    self.assertLess(float(jnp.max(jnp.abs(y16 - y32)) / jnp.max(jnp.abs(y32))), 3e-2)

  def test_lrn_matches_loop_formula(self):
    x = np.random.default_rng(1).uniform(0, 30, size=(1, 2, 2, 20)).astype(np.float32)
    got = np.asarray(lrn(jnp.asarray(x), mode="tf"))
    for c in range(20):
      s = np.sum(x[..., max(0, c - 5):c + 6] ** 2, axis=-1)
      np.testing.assert_allclose(got[..., c], x[..., c] / (1 + 1e-4 * s) ** 0.75, rtol=1e-5)


class WeightImportTest(chex.TestCase):

  @pytest.mark.slow
  def test_caffe_round_trip_mat_and_npz(self):
    _, variables = _init("googlenet", 35, seed=3)
    params = variables["params"]
    blobs = weights.params_to_caffe_blobs(params)
    self.assertEqual(blobs["conv1/7x7_s2"].shape, (64, 3, 7, 7))   # OIHW
    self.assertIn("inception_3a/3x3_reduce_bias", blobs)
    d = tempfile.mkdtemp()
    weights.save_caffe_mat(os.path.join(d, "g.mat"), blobs)
    np.savez(os.path.join(d, "g.npz"), **blobs)
    for loaded in (weights.load_caffe_mat(os.path.join(d, "g.mat")), weights.load_npz(os.path.join(d, "g.npz"))):
      _same(weights.caffe_blobs_to_params(loaded, params), params)

  @pytest.mark.slow
  def test_torchvision_round_trip_safetensors(self):
    from safetensors.numpy import save_file
    _, variables = _init("googlenet_bn", 35, seed=4)
    variables = _perturb_stats(variables)
    state = weights.variables_to_torchvision(variables)
    self.assertEqual(state["inception3a.branch2.0.conv.weight"].shape, (96, 192, 1, 1))
    self.assertIn("conv1.bn.running_var", state)
    # A real torchvision file also holds these; they are ignored.
    state["fc.weight"] = np.zeros((1000, 1024), np.float32)
    state["aux1.conv.conv.weight"] = np.zeros((128, 512, 1, 1), np.float32)
    state["conv1.bn.num_batches_tracked"] = np.zeros((), np.int64)
    path = os.path.join(tempfile.mkdtemp(), "googlenet.safetensors")
    save_file(state, path)
    _same(weights.torchvision_to_variables(weights.load_torchvision_state(path), variables), variables)

  def test_matches_torchvision_googlenet_through_a_pth_file(self):
    """Independent check of the torchvision layout: torchvision's own GoogLeNet
    (random weights, random BatchNorm statistics) saved as .pth, imported, and
    run on the same images in both frameworks. Needs torch and torchvision
    (skipped without them; the accelerator image has both)."""
    torch = pytest.importorskip("torch")
    tv_models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    model = tv_models.googlenet(weights=None, aux_logits=False, transform_input=True, init_weights=True)
    with torch.no_grad():
      for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
          m.running_mean.uniform_(-0.5, 0.5)
          m.running_var.uniform_(0.5, 1.5)
          m.weight.uniform_(0.5, 1.5)
          m.bias.uniform_(-0.2, 0.2)
    model.fc = torch.nn.Identity()
    model.dropout = torch.nn.Identity()   # torchvision's dropout before fc; the backbone has none
    path = os.path.join(tempfile.mkdtemp(), "googlenet.pth")
    torch.save(model.state_dict(), path)

    net, template = _init("googlenet_bn", 99)
    variables = weights.torchvision_to_variables(weights.load_torchvision_state(path), template)
    images = np.random.default_rng(0).normal(size=(3, 99, 99, 3)).astype(np.float32)
    ours_eval = np.asarray(net.apply(variables, images, train=False))
    ours_train, _ = net.apply(variables, images, train=True, mutable=["batch_stats"])
    nchw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
      model.eval()
      theirs_eval = model(nchw).numpy()
      model.train()
      theirs_train = model(nchw).numpy()
    self.assertEqual(ours_eval.shape, (3, 1024))
    self.assertGreater(np.abs(theirs_eval).max(), 1e-3)   # not a trivially zero comparison
    np.testing.assert_allclose(ours_eval, theirs_eval, rtol=1e-3, atol=1e-4 * np.abs(theirs_eval).max())
    np.testing.assert_allclose(np.asarray(ours_train), theirs_train, rtol=1e-3,
                               atol=1e-4 * np.abs(theirs_train).max())

  @pytest.mark.slow   # compiles a whole network or step
  def test_mismatches_listed_in_one_message(self):
    _, variables = _init("googlenet", 35)
    blobs = weights.params_to_caffe_blobs(variables["params"])
    del blobs["inception_4a/5x5"]
    blobs["loss3/classifier"] = np.zeros((1000, 1024))
    blobs["conv2/3x3_bias"] = np.zeros(7)
    with self.assertRaisesRegex(weights.WeightMismatchError,
                                r"missing \(1\): \['inception_4a/5x5'\].*unexpected \(1\): "
                                r"\['loss3/classifier'\].*mis-shaped \(1\): conv2/3x3_bias is \(7,\), expected \(192,\)"):
      weights.caffe_blobs_to_params(blobs, variables["params"])
    with self.assertRaisesRegex(ValueError, "unknown torchvision weight format"):
      weights.load_torchvision_state("weights.bin")

  @pytest.mark.slow
  def test_converted_caffe_npz_and_pretrained_config(self):
    _, variables = _init("googlenet", 35, seed=5)
    d = tempfile.mkdtemp()
    np.savez(os.path.join(d, "blobs.npz"), **weights.params_to_caffe_blobs(variables["params"]))
    out = os.path.join(d, "googlenet.npz")
    converted, meta = registry.convert_weight_source("caffe_npz", os.path.join(d, "blobs.npz"))
    weights.save_variables(out, converted, meta=meta)
    loaded = weights.load_variables(out)
    _same(loaded["params"], variables["params"])
    # Loading into a state whose backbone differs fails with the names.
    with self.assertRaisesRegex(weights.WeightMismatchError, "do not match the backbone.*missing"):
      weights.load_pretrained_backbone(tiny_state(), out)
    with self.assertRaisesRegex(FileNotFoundError, "does not exist"):
      weights.load_pretrained_backbone(tiny_state(), os.path.join(d, "nope.npz"))

  def test_pretrained_backbone_replaces_only_the_backbone(self):
    state = tiny_state()
    new_backbone = jax.tree_util.tree_map(lambda x: np.full(x.shape, 0.5, np.float32),
                                          {"params": state.params["backbone"],
                                           "batch_stats": state.batch_stats["backbone"]})
    path = os.path.join(tempfile.mkdtemp(), "bb.npz")
    weights.save_variables(path, new_backbone)
    loaded = weights.load_pretrained_backbone(state, path)
    _same(loaded.params["backbone"], new_backbone["params"])
    _same(loaded.batch_stats["backbone"], new_backbone["batch_stats"])
    _same(loaded.params["embedding"], state.params["embedding"])


@pytest.mark.parametrize("kind", ["ties", "normal", "constant", "bfloat16"])
def test_max_pool_3x3_equals_xlas_with_its_gradient(kind):
  from hdml_jax.models.googlenet import max_pool_3x3

  rng = np.random.default_rng(7)
  shape = (2, 7, 6, 3)
  x = {"ties": rng.integers(0, 3, shape).astype(np.float32), "normal": rng.normal(size=shape).astype(np.float32),
       "constant": np.full(shape, -2.0, np.float32),
       "bfloat16": rng.integers(-2, 3, shape).astype(jnp.bfloat16)}[kind]
  g = jnp.asarray(rng.normal(size=shape), x.dtype)
  plain = lambda x: nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))   # XLA's gradient
  np.testing.assert_array_equal(np.asarray(max_pool_3x3(x), np.float32), np.asarray(plain(x), np.float32))
  ours = jax.jit(jax.grad(lambda x: jnp.sum(g * max_pool_3x3(x)).astype(jnp.float32)))(x)
  xla = jax.jit(jax.grad(lambda x: jnp.sum(g * plain(x)).astype(jnp.float32)))(x)
  tol = 2e-2 if kind == "bfloat16" else 1e-6   # the order of a position's contributions differs
  np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(xla, np.float32), rtol=tol, atol=tol)
  # Where the windows tie, every window's gradient goes to exactly one position: the totals agree.
  np.testing.assert_allclose(float(jnp.sum(ours.astype(jnp.float32))), float(jnp.sum(g.astype(jnp.float32))),
                             rtol=tol, atol=tol * 10)


def test_max_pool_3x3_gradient_against_finite_differences():
  from hdml_jax.models.googlenet import max_pool_3x3

  jax.config.update("jax_enable_x64", True)
  try:
    x = np.random.default_rng(3).permutation(40).reshape(1, 5, 4, 2).astype(np.float64) / 7   # no ties
    g = np.random.default_rng(4).normal(size=x.shape)
    f = lambda x: float(jnp.sum(g * max_pool_3x3(jnp.asarray(x))))
    ours = np.asarray(jax.grad(lambda x: jnp.sum(g * max_pool_3x3(x)))(jnp.asarray(x)))
    np.testing.assert_allclose(ours, numeric_grad(f, x, h=1e-4), atol=1e-8)
  finally:
    jax.config.update("jax_enable_x64", False)


def test_the_inception_modules_use_the_shifted_max_pool_gradient():
  # The module's gradient has no select_and_scatter (XLA's slow max-pool gradient on CPU) in it.
  module = Inception((4, 2, 4, 2, 4, 4))
  x = jnp.ones((1, 6, 6, 3))
  v = module.init(jax.random.key(0), x)
  hlo = jax.jit(jax.grad(lambda x: jnp.sum(module.apply(v, x)))).lower(x).as_text()
  assert "select_and_scatter" not in hlo and "select-and-scatter" not in hlo
