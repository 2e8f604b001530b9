r"""NTU RGB+D action recognition with ResNet3D-34 (GSC paper Table 7, App. 6.1).

    python -m experiments.ntu.prepare --videos nturgb+d_rgb --store ntu128
    python -m experiments.ntu --workdir runs/ntu_xsub_ce --config.data.store ntu128
    python -m experiments.ntu --workdir runs/ntu_xview_gsc --config.data.store ntu128 \
        --config.data.protocol xview --config.loss.gsc.gamma=0.02 --config.loss.gsc.top_c=2

Recipe ("the settings of Ji et al. 2021", paper App. 6.1): ResNet3D-34 (Hara et al. 2018), SGD
with momentum 0.9, weight decay 1e-5 (coupled, torch.optim.SGD), lr 0.01 divided by 10 every 20
epochs (`schedule.step_every`); clips of 16 frames, 112 x 112 random crops and flips of videos
stored at short side 128; inputs x / 255 normalised by the Kinetics mean and std of
3D-ResNets-PyTorch. Not stated by the paper and chosen here (`departures` lists them): 60
epochs (three lr stages), batch 32, shortcut 'A' (Hara's resnet-34 with 63.5M parameters),
evaluation 4 clips x 3 crops per video, no Kinetics pre-training.
"""

import ml_collections

from experiments.common import config as base
from experiments.ntu import data
from experiments.ntu import prepare

RECIPE = {
    "optimizer.learning_rate": 0.01,
    "optimizer.momentum": 0.9,
    "optimizer.weight_decay": 1e-5,
    "schedule.step_every": 20,
    "schedule.factor": 0.1,
    "model.name": "resnet3d34",
    "data.clip_frames": 16,
    "data.crop": 112,
}
CHOSEN = {
    "epochs": 60,
    "batch_size": 32,
    "model.shortcut": "A",
    "data.eval_clips": 4,
    "data.eval_crops": 3,
    "data.short_side": prepare.DEFAULT_SHORT_SIDE,
    "model.width": 64,
}


def get_config():
    config = base.base_config()
    config.task = "experiments.ntu.task"
    config.data.store = ""  # a folder of `python -m experiments.ntu.prepare`
    config.data.protocol = "xsub"  # xsub | xview (NTU-60); xsub120 | xset (NTU-120)
    config.data.short_side = prepare.DEFAULT_SHORT_SIDE  # must equal the store's
    config.data.clip_frames = 16  # T
    config.data.crop = 112  # S
    config.data.eval_clips = 4  # clips per test video (evenly spaced)
    config.data.eval_crops = 3  # 1: centre; 3: along the longer side
    config.data.workers = 4  # threads cutting clips per host
    config.data.mean = data.MEAN
    config.data.std = data.STD
    config.model.name = "resnet3d34"  # resnet3d18 | resnet3d34
    config.model.shortcut = "A"  # A (zero-padding) | B (1x1x1 conv + BN)
    config.model.width = 64  # first-stage width
    config.epochs = 60
    config.batch_size = 32
    config.eval_batch_size = 8  # videos per evaluation batch (each eval_clips x eval_crops)
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.01
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 1e-5
    config.schedule.name = "multistep"
    config.schedule.step_every = 20  # lr *= factor every 20 epochs
    config.schedule.factor = 0.1
    config.evals = ml_collections.ConfigDict({"test": {"type": "multiview", "split": "test"}})
    return config


def departures(config) -> dict:
    """{field: (recipe value, this run's)} where the run leaves the stated recipe or the
    values chosen here."""
    out = {}
    for path, want in {**RECIPE, **CHOSEN}.items():
        have = base.get(config, path)
        if have != want:
            out[path] = (want, have)
    return out
