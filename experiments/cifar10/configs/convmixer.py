r"""CIFAR-10 ConvMixer-256/8 (GSC paper Table 1), the recipe of locuslab/convmixer-cifar10.

    python -m experiments.cifar10 --config experiments/cifar10/configs/convmixer.py \
        --workdir runs/convmixer --config.data.data_dir DIR

train.py: AdamW (lr 0.01, weight decay 0.01), batch 512, 25 epochs, per-iteration piecewise-linear
lr 0 -> lr at 2E//5 -> lr/20 at 4E//5 -> 0 at E (`optim`, 'onecycle_linear'). Augmentation here is
the same crop + flip as for AlexNet; the reference's RandAugment / ColorJitter / RandomErasing are
not implemented. Paper: CE 89.79 %, CE+GSC(0.02, 3) 92.47 %.
"""

import ml_collections

from experiments.cifar10.configs import alexnet
from experiments.common import config as base


def model_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "name": "convmixer",  # ConvMixer-h/d
            "dim": 256,  # h, channels of the tokens
            "depth": 8,  # d, mixer blocks
            "kernel_size": 5,  # depthwise kernel
            "patch_size": 2,  # patch embedding stride
        }
    )


def recipe() -> dict:
    """The fields where this recipe differs from AlexNet's (a Table 1 row's overrides)."""
    return {
        "model": model_config().to_dict(),
        "epochs": 25,
        "batch_size": 512,
        "optimizer.name": "adamw",
        "optimizer.learning_rate": 0.01,
        "optimizer.weight_decay": 0.01,
        "schedule.name": "onecycle_linear",
        "schedule.milestones": (),
        "data.std": (0.2471, 0.2435, 0.2616),
    }


def get_config():
    return base.apply_overrides(alexnet.get_config(), recipe())
