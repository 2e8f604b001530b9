r"""GSC paper Fig. 5: CIFAR-10 test top-1 against gamma for top_c 2-5, and against the entropy
baseline's lambda.

    python -m experiments.cifar10 --config experiments/cifar10/configs/sweep.py \
        --workdir runs/f5 --config.data.data_dir DIR

Writes sweep.png (accuracy against gamma, one curve per top_c, CE dashed) and entropy.png.
"""

from experiments.cifar10.configs import alexnet
from experiments.common import grid

GAMMAS = (0.01, 0.02, 0.05, 0.1, 0.2)
TOP_CS = (2, 3, 4, 5)


def get_config():
    return alexnet.get_config()


def get_grid():
    rows = [grid.Row("ce", {"loss.name": "ce"})]
    rows += [
        grid.Row(f"gsc_g{g:g}_c{c}", {"loss.name": "ce", "loss.gsc.gamma": g, "loss.gsc.top_c": c})
        for c in TOP_CS
        for g in GAMMAS
    ]
    rows += [
        grid.Row(f"entropy_l{g:g}", {"loss.name": "entropy", "loss.entropy.entropy_weight": g})
        for g in GAMMAS
    ]
    return grid.Grid(
        name="fig5",
        title="GSC paper Fig. 5: CIFAR-10 test top-1 against the strength.",
        rows=tuple(rows),
        columns=(grid.Column("test/top1", "top-1 %"), grid.Column("test/ece", "ECE %")),
        plots=(
            grid.Plot(
                x="loss.gsc.gamma", series="loss.gsc.top_c", baseline=("ce",), file="fig5.png"
            ),
            grid.Plot(x="loss.entropy.entropy_weight", baseline=("ce",), file="fig5_entropy.png"),
        ),
    )
