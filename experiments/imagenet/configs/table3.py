r"""GSC paper Table 3: ImageNet-1K, ResNet-50 and ResNet-101, CE and CE+GSC, 100 epochs.

    python -m experiments.imagenet --config experiments/imagenet/configs/table3.py \
        --workdir runs/t3 --config.data.dataset=imagenet2012 --config.bf16 [--rows rn50_ce]

Rows not run read "not run"; the table quotes the paper's rows from Zhang et al. (2021) too.
"""

from experiments.common import grid
from experiments.imagenet.configs import pycls

ROWS = (  # (row id, model, gamma, top_c, paper top-1 error %, paper top-5 error %)
    ("rn50_ce", "resnet50", 0.0, 2, 23.03, 6.55),
    ("rn50_ce_gsc", "resnet50", 0.02, 7, 22.49, 6.35),
    ("rn101_ce", "resnet101", 0.0, 2, 21.26, 5.66),
    ("rn101_ce_gsc", "resnet101", 0.02, 5, 20.79, 5.46),
)
QUOTED = (  # quoted in the paper from Zhang et al. (2021), 250 epochs: not run here
    ("RN-50", "CE", 23.68, 7.05),
    ("RN-50", "LS", 22.82, 6.66),
    ("RN-50", "CutOut", 22.93, 6.66),
    ("RN-50", "OLS", 22.28, 6.39),
    ("RN-101", "CE", 21.87, 6.29),
    ("RN-101", "LS", 21.27, 5.85),
    ("RN-101", "CutOut", 20.72, 5.51),
    ("RN-101", "OLS", 20.85, 5.50),
)


def get_config():
    return pycls.get_config()


def quoted(results, workdir) -> str:
    del results, workdir
    lines = [
        "Quoted in the paper from Zhang et al. (2021), 250 epochs (not run here):",
        "",
        "| model | method | top-1 err % | top-5 err % |",
        "|---|---|---|---|",
    ]
    lines += [f"| {m} | {n} | {e1:.2f} | {e5:.2f} |" for m, n, e1, e5 in QUOTED]
    return "\n".join(lines) + "\n"


def get_grid():
    return grid.Grid(
        name="table3",
        title="GSC paper Table 3: ImageNet-1K top-1 and top-5 error.",
        rows=tuple(
            grid.Row(
                i,
                {"model.name": m, "loss.gsc.gamma": g, "loss.gsc.top_c": c},
                {"test/top1": e1, "test/top5": e5},
            )
            for i, m, g, c, e1, e5 in ROWS
        ),
        columns=(
            grid.Column("test/top1", "top-1 err %", "err"),
            grid.Column("test/top5", "top-5 err %", "err"),
            grid.Column("test/ece", "ECE %"),
        ),
        extra=quoted,
    )
