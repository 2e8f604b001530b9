"""The strength study on FER2013: the informative strengths of the digits study on real faces.

    python -m experiments.fer2013 --config experiments/fer2013/configs/strength.py \
        --workdir runs/fer2013_strength --config.data.data_dir DIR

CE with GSC at gamma 0 (the base loss alone), 0.05 (the top of the paper's range) and 2 (where
the digits study saw ECE fall under label noise), top_c 2, on the clean training split and with
40 % symmetric label noise (training split only, as in Table 2); 3 seeds, paired against
gamma = 0. Each cell trains its 9 (gamma, seed) members together as one population.

SHORTENED recipe (every departure is in each summary.json): 5 epochs, VGG 8-16-32-64 with hidden
512, one of the ten training crops per face and step; the test split (PublicTest with the default
`val_usage`) is evaluated with TenCrop after every epoch. A population follows no single run's
metric, so reduce-on-plateau and the best-validation state are off (within 5 epochs the recipe's
plateau rule, patience 5, never acts anyway) and the validation split is not evaluated.
Writes strength.md (means ± std, the paired differences and the diagnostics:
`experiments.common.strength`) and strength.png (accuracy, ECE and NLL against gamma, one panel
per noise rate).
"""

import ml_collections

from experiments.common import grid
from experiments.common import strength
from experiments.fer2013.configs import vgg

GAMMAS = (0.0, 0.05, 2.0)
NOISE_RATES = (0.0, 0.4)
SEEDS = (0, 1, 2)


def get_config():
    config = vgg.get_config()
    config.epochs = 5
    config.model.width = 8
    config.model.hidden = 512
    config.data.train_crops = 1
    config.plateau.factor = 0.0
    config.best.metric = ""
    config.evals = ml_collections.ConfigDict(
        {"test": {"type": "multiview", "split": "test", "metrics": ("confusion",)}}
    )
    return config


def get_grid():
    rows = tuple(
        grid.Row(
            f"ce_c2_nr{round(100 * n)}",
            {"loss.name": "ce", "loss.gsc.top_c": 2, "data.label_noise": n},
        )
        for n in NOISE_RATES
    )
    columns = (
        grid.Column("test/top1", "accuracy %"),
        grid.Column("test/ece", "ECE %"),
        grid.Column("test/nll", "NLL", "nats"),
    )
    return grid.Grid(
        name="strength",
        title="Strength study on FER2013 (SHORTENED: VGG 8/512, 5 epochs, 1 training crop): "
        "CE with GSC against gamma.",
        rows=rows,
        columns=columns,
        seeds=SEEDS,
        vmap_seeds=True,
        vmap_gammas=GAMMAS,
        plots=(
            grid.Plot(
                x="loss.gsc.gamma",
                series="loss.gsc.top_c",
                panel="data.label_noise",
                columns=("test/top1", "test/ece", "test/nll"),
                rows=("ce_",),
                file="strength.png",
            ),
        ),
        extra=strength.reading,
    )
