r"""GSC paper Table 1: every CIFAR-10 loss with the paper's hyper-parameters, AlexNet and ConvMixer.

    python -m experiments.cifar10 --config experiments/cifar10/configs/table1.py \
        --workdir runs/t1 --config.data.data_dir DIR [--rows alexnet_ce,alexnet_ce_gsc]

Each row trains with its model's recipe (configs/alexnet.py, configs/convmixer.py); command-line
overrides (--config.epochs=6) apply to every row. Columns: final and best-epoch test top-1, top-5,
ECE and NLL; the paper's top-1 and top-5 beside ours.
"""

from experiments.cifar10.configs import alexnet
from experiments.cifar10.configs import convmixer
from experiments.common import grid


def get_config():
    return alexnet.get_config()


def _loss(name, gamma=0.0, top_c=2, **params) -> dict:
    out = {"loss.name": name, "loss.gsc.gamma": gamma, "loss.gsc.top_c": top_c}
    out.update({f"loss.{name}.{k}": v for k, v in params.items()})
    return out


ALEXNET, CONVMIXER = {}, convmixer.recipe()
# (row id, recipe, loss, paper top-1 %, paper top-5 %)
ROWS = (
    ("alexnet_ce", ALEXNET, _loss("ce"), 73.33, 98.01),
    ("alexnet_entropy", ALEXNET, _loss("entropy", entropy_weight=0.02), 74.21, 98.02),
    ("alexnet_focal", ALEXNET, _loss("focal", eta=2.0), 75.10, 98.38),
    ("alexnet_ls", ALEXNET, _loss("ls", alpha=0.1), 76.31, 98.09),
    ("alexnet_ce_gsc", ALEXNET, _loss("ce", 0.05, 2), 77.07, 98.00),
    ("alexnet_focal_gsc", ALEXNET, _loss("focal", 0.02, 3, eta=2.0), 76.28, 98.14),
    ("alexnet_ls_gsc", ALEXNET, _loss("ls", 0.03, 2, alpha=0.1), 77.75, 97.60),
    ("convmixer_ce", CONVMIXER, _loss("ce"), 89.79, 99.70),
    ("convmixer_ce_gsc", CONVMIXER, _loss("ce", 0.02, 3), 92.47, 99.78),
)


def get_grid():
    return grid.Grid(
        name="table1",
        title="GSC paper Table 1: CIFAR-10, test accuracy of every loss.",
        rows=tuple(
            grid.Row(i, {**recipe, **loss}, {"test/top1": p1, "test/top5": p5})
            for i, recipe, loss, p1, p5 in ROWS
        ),
        columns=(
            grid.Column("test/top1", "top-1 %"),
            grid.Column("max:test/top1", "best-epoch top-1 %"),
            grid.Column("test/top5", "top-5 %"),
            grid.Column("test/ece", "ECE %"),
            grid.Column("test/nll", "NLL", "nats"),
        ),
    )
