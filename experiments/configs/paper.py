"""The paper's experiments: GoogLeNet, 227 px, 8000 steps, the reference's hyper-parameters.

Pick the dataset, loss and method with a config string:

    python -m experiments.main --workdir runs/cub_hdml_npair \\
        --config experiments/configs/paper.py:cub,npair,hdml
    python -m experiments.main --workdir runs/cars_base_triplet \\
        --config experiments/configs/paper.py:cars,triplet,baseline

Datasets (``cub``, ``cars``, ``sop``) are built once by the TFDS builders
from the official archives, unpacked into the folder given as
``--config.dataset.data_dir`` (train and test classes as in the paper: CUB
1-100 / 101-200, Cars196 1-98 / 99-196, SOP by Ebay_train.txt /
Ebay_test.txt). ImageNet weights: convert them with
``python -m experiments.convert_weights`` and pass
``--config.model.pretrained=weights/googlenet.npz``; without them the
backbone starts from random weights (not the paper's setting).

Model selection follows the reference: the checkpoint with the best *test*
NMI (named as such in results.json); ``--config.selection.split=none``
reports the last step instead.

Paper results (HDML, N-pair, ImageNet-pretrained GoogLeNet; Zheng et al.
2019, Tables 1-3): CUB R@1/2/4/8 53.7/65.7/76.7/85.7; Cars196
79.1/87.1/92.1/95.5; SOP R@1/10/100 68.7/83.2/92.4. Baseline N-pair: CUB
R@1 about 51.9, Cars196 about 68.9.
"""

from experiments.configs.base import get_base_config

# dataset: (embedding, beta, wd, lr, l2_reg, recall Ks), reference values
_DATASETS = {
    "cub": (256, 5e3, 1e-3, 6e-5, 1.5e-2, (1, 2, 4, 8)),
    "cars": (128, 1e4, 5e-3, 7e-5, 3e-3, (1, 2, 4, 8)),
    "sop": (512, 5e4, 9e-3, 2e-5, 3e-3, (1, 10, 100)),
}


def get_config(arg: str = "cub,npair,hdml"):
  try:
    name, loss, method = arg.split(",")
    emb, beta, wd, lr, l2, ks = _DATASETS[name]
  except (ValueError, KeyError):
    raise ValueError(f"paper.py config string must be '<cub|cars|sop>,<npair|triplet>,<hdml|baseline>', "
                     f"got {arg!r}.") from None
  if loss not in ("npair", "triplet") or method not in ("hdml", "baseline"):
    raise ValueError(f"paper.py: loss must be npair|triplet and method hdml|baseline, got {arg!r}.")
  c = get_base_config()
  c.dataset.name = name
  c.dataset.resize, c.dataset.crop, c.dataset.preprocess = 256, 227, "paper"
  c.model.backbone = "googlenet"
  c.model.backbone_kwargs = {}
  c.model.embedding_dim = emb
  c.loss.name = loss
  c.hdml.enabled = method == "hdml"
  c.hdml.beta, c.hdml.weight_decay, c.hdml.l2_reg = beta, wd, l2
  c.optimizer.metric_lr = lr
  if name == "sop":
    c.optimizer.generator_lr = 5e-4
    c.optimizer.clip_value = 2.0
  c.batch_size = 128 if loss == "npair" else 120
  c.num_steps = 8000
  c.eval.recall_ks = ks
  c.selection.split = "test"        # the reference's rule; report it as such
  c.selection.metric = "nmi"
  return c
