"""The digits task: scikit-learn's bundled 8x8 digits (1,797 real images, nothing downloaded) and
a small CNN; the quickstart's data and model.

Stratified 70/30 train/test split (`memory.load_digits`, pixel values 0..16 rescaled to uint8),
no augmentation; subsets and symmetric label noise on the training split (`memory.prepare`). The
source holds the arrays on the devices, so several seeds train together (`--seeds` of a grid with
`vmap_seeds`): the quickstart trains every loss x seed in a few compiled programs.
"""

import flax.linen as nn

from experiments.common.data import memory
from experiments.common.layers import TorchConv
from experiments.common.layers import TorchDense


class SmallCNN(nn.Module):
    """[B, 8, 8, 1] -> conv3x3 16 -> conv3x3/2 32 (4x4) -> dense 64 -> [B, 10]; ReLU, no norm.

    On the CPU the convolutions run as patch-matrix products (`layers.TorchConv`), which stay fast
    under vmap over seeds on XLA:CPU.
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        x = nn.relu(TorchConv(16, 3, 1, 1)(x))
        x = nn.relu(TorchConv(32, 3, 2, 1)(x))
        x = nn.relu(TorchDense(64)(x.reshape(x.shape[0], -1)))
        return TorchDense(self.num_classes)(x)


def validate(config) -> None:
    memory.check_subset_fields(config)


def make_source(config) -> memory.ArraySource:
    dataset = memory.load_npz(config.data.npz) if config.data.npz else memory.load_digits()
    dataset, info = memory.prepare(dataset, config.data)
    return memory.ArraySource(dataset, info=info)


def make_model(config, num_classes: int, mesh):
    del config, mesh
    return SmallCNN(num_classes)
