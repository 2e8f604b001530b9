r"""GSC paper Table 4: Flowers-102, ResNet-50 fine-tuned from ImageNet: CE, LS, OLS, each without
and with GSC.

    python -m experiments.imagenet --config experiments/imagenet/configs/table4.py \
        --workdir runs/t4 --config.model.init_from=runs/t3/table3/rn50_ce
"""

from experiments.common import grid
from experiments.imagenet.configs import ols_flowers

ROWS = (  # (row id, loss, params, gamma, top_c, paper top-1 %, paper top-5 %)
    ("ce", "ce", {}, 0.0, 2, 90.69, 97.57),
    ("ce_gsc", "ce", {}, 0.05, 9, 92.36, 98.10),
    ("ls", "ls", {"alpha": 0.1}, 0.0, 2, 92.42, 98.07),
    ("ls_gsc", "ls", {"alpha": 0.1}, 0.05, 3, 93.12, 98.28),
    ("ols", "ols", {}, 0.0, 2, 92.86, 98.45),
    ("ols_gsc", "ols", {}, 0.005, 11, 93.49, 98.05),
)


def get_config():
    return ols_flowers.get_config()


def get_grid():
    rows = []
    for i, name, params, gamma, top_c, p1, p5 in ROWS:
        overrides = {
            "loss.name": name,
            "loss.gsc.gamma": gamma,
            "loss.gsc.top_c": top_c,
            **{f"loss.{name}.{k}": v for k, v in params.items()},
        }
        rows.append(grid.Row(i, overrides, {"test/top1": p1, "test/top5": p5}))
    return grid.Grid(
        name="table4",
        title="GSC paper Table 4: Flowers-102 test accuracy, ResNet-50.",
        rows=tuple(rows),
        columns=(
            grid.Column("test/top1", "top-1 %"),
            grid.Column("max:test/top1", "best-epoch top-1 %"),
            grid.Column("test/top5", "top-5 %"),
            grid.Column("test/ece", "ECE %"),
        ),
    )
