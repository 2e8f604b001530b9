r"""FER2013 with the VGG and recipe of Khairuddin & Chen (2021) (GSC paper Table 6).

    python -m experiments.fer2013 --workdir runs/fer_ce --config.data.data_dir DIR
    python -m experiments.fer2013 --workdir runs/fer_gsc --config.data.csv fer2013.csv \
        --config.loss.gsc.gamma=0.01 --config.loss.gsc.top_c=2

Recipe (arXiv 2105.03588; usef-kh/fer train.py, utils/hparams.py, data/fer2013.py): SGD with lr
0.01, momentum 0.9, Nesterov and weight decay 1e-4 (coupled, as in torch.optim.SGD); batches of 64
faces; 300 epochs; ReduceLROnPlateau on the validation accuracy (factor 0.75, patience 5); 40x40
TenCrop training, every crop a sample (640 crops a step), and TenCrop evaluation. The reference
computes in float16 under autocast; here float32 (or bfloat16 with --config.bf16). Pixels are
x / 255. The state with the best validation accuracy is kept and evaluated at the end
('<metric>@best' in summary.json). Paper: CE 72.12 % test, CE+GSC(0.01, 2) 72.72 %.
"""

import ml_collections

from experiments.common import config as base
from experiments.common.data import memory
from experiments.fer2013 import augment
from experiments.fer2013 import data

RECIPE = {
    "optimizer.learning_rate": 0.01,
    "optimizer.momentum": 0.9,
    "optimizer.weight_decay": 1e-4,
    "batch_size": 64,
    "epochs": 300,
    "plateau.factor": 0.75,
    "plateau.patience": 5,
    "data.crop": 40,
    "data.train_crops": augment.NUM_TEN_CROPS,
    "model.width": 64,
    "model.hidden": 4096,
    "model.dropout": 0.2,
}


def get_config():
    config = base.base_config()
    config.task = "experiments.fer2013.task"
    config.data.data_dir = ""  # image folder DIR/{train,val,test}/<emotion>/<image>
    config.data.csv = ""  # the Kaggle fer2013.csv (emotion, pixels, Usage)
    config.data.val_usage = data.DEFAULT_VAL_USAGE  # PrivateTest | PublicTest validates
    memory.add_subset_fields(config.data)
    config.data.crop = 40  # TenCrop side
    config.data.train_crops = augment.NUM_TEN_CROPS  # 10: every crop a sample; 1: one of ten
    config.model.width = 64  # VGG first-stage channels
    config.model.hidden = 4096  # VGG hidden linear width
    config.model.dropout = 0.2  # dropout of the hidden layers
    config.epochs = 300
    config.batch_size = 64  # faces per step
    config.eval_batch_size = 64  # faces per evaluation batch (ten crops each)
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.01
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 1e-4
    config.plateau.factor = 0.75
    config.plateau.patience = 5
    config.plateau.metric = "val/top1"
    config.best.metric = "val/top1"
    config.evals = ml_collections.ConfigDict(
        {
            split: {"type": "multiview", "split": split, "metrics": ("confusion",)}
            for split in ("val", "test")
        }
    )
    return config


def departures(config) -> list:
    """Every difference from the recipe, as 'field: ours (recipe value)'."""
    out = [
        f"{k}: {base.get(config, k)} (recipe {v})"
        for k, v in RECIPE.items()
        if base.get(config, k) != v
    ]
    if config.data.num_train_examples:
        out.append(f"data.num_train_examples: {config.data.num_train_examples} (recipe: all)")
    if config.data.num_eval_examples:
        out.append(f"data.num_eval_examples: {config.data.num_eval_examples} (recipe: all)")
    if config.data.label_noise:
        out.append(f"data.label_noise: {config.data.label_noise} (recipe: none)")
    out.append(f"precision: {'bfloat16' if config.bf16 else 'float32'} (recipe: float16 autocast)")
    return out
