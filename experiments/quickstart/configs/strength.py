"""The strength study on digits: where GSC acts (paper Fig. 5 and Table 2's protocol).

    python -m experiments.quickstart --config experiments/quickstart/configs/strength.py \
        --workdir runs/strength

gamma on a log grid from where the term is negligible to where it dominates the loss (the
paper's values included) x top_c 2-5 x symmetric label noise 0, 20, 40, 60, 80 % (Table 2's
protocol, noise on the training split only, seed 123) with CE, and for label smoothing and focal
loss top_c 2 at noise 0 and 80 %; 5 seeds per cell. Each cell trains its (gamma, seed) members
together (one population run, gamma traced); gamma = 0 is the base loss alone, on the same seeds.
Writes strength.md (every cell's mean ± std, then the paired differences against gamma = 0 and
the diagnostics: `experiments.common.strength`) and strength.png / strength_ls_focal.png
(accuracy, ECE and NLL against gamma, one curve per top_c, one panel per noise rate).
"""

from experiments.common import grid
from experiments.common import strength
from experiments.quickstart.configs import default

GAMMAS = (0.0, 0.001, 0.003, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
TOP_CS = (2, 3, 4, 5)
NOISE_RATES = (0.0, 0.2, 0.4, 0.6, 0.8)
SEEDS = (0, 1, 2, 3, 4)


def get_config():
    return default.get_config()


def get_grid():
    def ce_rows(top_c):
        return [
            grid.Row(
                f"ce_c{top_c}_nr{round(100 * n)}",
                {"loss.name": "ce", "loss.gsc.top_c": top_c, "data.label_noise": n},
            )
            for n in NOISE_RATES
        ]

    # In order of what a reading needs first: top_c 2 at every noise rate, LS and focal, then
    # the other top_c.
    rows = ce_rows(2)
    rows += [
        grid.Row(
            f"{name}_c2_nr{round(100 * n)}",
            {"loss.name": name, "loss.gsc.top_c": 2, "data.label_noise": n},
        )
        for name in ("ls", "focal")
        for n in (0.0, 0.8)
    ]
    for top_c in TOP_CS[1:]:
        rows += ce_rows(top_c)
    columns = (
        grid.Column("test/top1", "accuracy %"),
        grid.Column("test/ece", "ECE %"),
        grid.Column("test/nll", "NLL", "nats"),
    )
    metrics = ("test/top1", "test/ece", "test/nll")
    return grid.Grid(
        name="strength",
        title="Strength study on digits (SmallCNN, 20 epochs): CE, LS and focal with GSC "
        "against gamma.",
        rows=tuple(rows),
        columns=columns,
        seeds=SEEDS,
        vmap_seeds=True,
        vmap_gammas=GAMMAS,
        plots=(
            grid.Plot(
                x="loss.gsc.gamma",
                series="loss.gsc.top_c",
                panel="data.label_noise",
                columns=metrics,
                rows=("ce_",),
                file="strength.png",
            ),
            grid.Plot(
                x="loss.gsc.gamma",
                series="loss.name",
                panel="data.label_noise",
                columns=metrics,
                rows=("ce_c2_nr0_", "ce_c2_nr80_", "ls_", "focal_"),
                file="strength_ls_focal.png",
            ),
        ),
        extra=strength.reading,
    )
