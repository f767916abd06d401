"""The whole-network benchmark's PyTorch GoogLeNet is the JAX googlenet_bn's architecture, variable for variable."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmarks import network_step
from hdml_jax.models import get_backbone


def test_the_pytorch_googlenet_has_the_jax_networks_variables_and_output():
  torch = pytest.importorskip("torch")
  net, features = network_step._torch_googlenet(torch)
  shapes = jax.eval_shape(lambda: get_backbone("googlenet_bn").init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                                                     train=False))
  ours = sorted(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes["params"]))
  theirs = sorted(p.numel() for p in net.parameters())
  assert ours == theirs   # every convolution and BatchNorm, the same sizes
  assert features == 1024
  assert tuple(net.eval()(torch.zeros(2, 3, 64, 64)).shape) == (2, 1024)


@pytest.mark.parametrize("argv, message", [(["--networks", "resnet50"], "--networks must name some of"),
                                           (["--batch", "7"], "--batch must be even")])
def test_bad_arguments_are_refused(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    network_step.main(argv)
  assert e.value.code == 2 and message in capsys.readouterr().err
