r"""Flowers-102 ResNet-50 with the fine-grained recipe of online label smoothing (GSC paper
Table 4).

    python -m experiments.imagenet --config experiments/imagenet/configs/ols_flowers.py \
        --workdir runs/flowers_ce --config.model.init_from=runs/t3/table3/rn50_ce

Recipe (Zhang et al. 2021, zhangchbin/OnlineLabelSmoothing fine-grained/main.py and solver.py):
SGD momentum 0.9, lr 0.01, weight decay 1e-4, batch 64, 100 epochs, lr x0.1 at epochs 45 and 80
(scaled to config.epochs), resize to 256x256 + random crop 224 + flip, evaluation resize 256x256 /
centre 224. The reference fine-tunes an ImageNet-trained ResNet-50: set config.model.init_from to
the workdir of an ImageNet run of the same model (its classifier is replaced). Paper: CE 90.69 %,
CE+GSC(0.05, 9) 92.36 %.
"""

from experiments.common import config as base
from experiments.imagenet.configs import pycls

RECIPE = {
    "data.dataset": "oxford_flowers102",
    "data.train_crop": "resize_random",
    "data.eval_crop": "square",
    "data.lighting_std": 0.0,
    "batch_size": 64,
    "optimizer.learning_rate": 0.01,
    "optimizer.reference_batch": 0,
    "optimizer.nesterov": False,
    "optimizer.weight_decay": 1e-4,
    "schedule.name": "multistep",
    "schedule.milestones": (0.45, 0.80),
}


def get_config():
    return base.apply_overrides(pycls.get_config(), RECIPE)
