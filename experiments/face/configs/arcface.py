r"""Face recognition: IR-ResNet-50 with ArcFace (+ GSC), CASIA-WebFace recipe (GSC paper Table 5).

    python -m experiments.face --workdir runs/arc --config.data.data_dir casia/ \
        --config.evals.verification.val_dir=casia_bins/
    python -m experiments.face --workdir runs/tiny --config.data.data_dir faces/ \
        --config.evals.verification.sets="('lfw/',)" --config.model.name=iresnet18 \
        --config.model.width=16 --config.model.depths="(1,1,1,1)" --config.data.image_size=32 \
        --config.epochs=2 --config.batch_size=64

Recipe 'arcface_casia' (GSC paper Table 5 says "the same settings as ArcFace", trained on
CASIA-WebFace; ArcFace, Deng et al. 2019, Sec. 4.1, as its CASIA recipe is usually quoted, not
checked against the paper's text here): IR-ResNet-50, 112x112 aligned faces, normalised with mean
and std 0.5, random horizontal flip only, SGD momentum 0.9, weight decay 5e-4 (coupled, as
PyTorch's SGD), batch 512, lr 0.1 divided by 10 at 20K and 28K iterations, 32K iterations (about
34 epochs of CASIA's 0.49M images: the milestones stay at 20/32 and 28/32 of the run when
config.epochs changes). Scale s = 64; margin 0.5 (ArcFace) or 0.4 (CosFace: set
--config.loss.margin.name=cosface --config.loss.margin.m=0.4), insightface arcface_torch.
"""

import ml_collections

from experiments.common import config as base


def get_config():
    config = base.base_config()
    config.task = "experiments.face.task"
    config.data.data_dir = ""  # identity folder DIR/<identity>/*.jpg of aligned faces
    config.data.image_size = 112  # model input (the images are resized to it)
    config.data.holdout_every = 50  # every N-th image of an identity is held out ('test')
    config.data.workers = 0  # parallel decode calls per host (0 = tf.data autotune)
    config.data.mean = (0.5, 0.5, 0.5)
    config.data.std = (0.5, 0.5, 0.5)
    config.model.name = "iresnet50"  # iresnet18 | iresnet34 | iresnet50 | iresnet100
    config.model.width = 64  # backbone width (smaller for CPU runs)
    config.model.depths = ()  # blocks per stage, overriding the name's (e.g. (1, 1, 1, 1))
    config.model.embedding_size = 512  # embedding dimension D
    config.model.dropout = 0.0  # dropout before the embedding layer (0 in insightface)
    config.model.shard_head = "auto"  # split the classifier over the devices: auto | yes | no
    config.loss.margin.name = "arcface"
    config.loss.margin.scale = 64.0
    config.loss.margin.m = 0.5
    config.epochs = 34
    config.batch_size = 512
    config.eval_batch_size = 256
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "multistep"
    config.schedule.milestones = (20 / 32, 28 / 32)
    config.schedule.round_to = "step"
    config.evals = ml_collections.ConfigDict(
        {
            "test": {"type": "classification", "split": "test"},
            "verification": {
                "type": "experiments.face.evaluators.Verification",
                "sets": (),
                "val_dir": "",
                "num_folds": 10,
            },
        }
    )
    config.resumable = (*config.resumable, "data.workers")
    return config
