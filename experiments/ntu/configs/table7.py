r"""GSC paper Table 7: NTU RGB+D action recognition, ResNet3D-34, CE and CE+GSC.

    python -m experiments.ntu --config experiments/ntu/configs/table7.py --workdir runs/t7 \
        --config.data.store ntu128 [--rows xsub_ce,xsub_gsc_0.02_3] --config.bf16

Columns: video-level top-1 (logits averaged over the clips x crops views), clip-level top-1,
ECE and NLL of the final model. Rows not run read "not run".
"""

from experiments.common import grid
from experiments.ntu.configs import resnet3d

ROWS = (  # (row id, protocol, gamma, top_c, paper top-1 %)
    ("xsub_ce", "xsub", 0.0, 2, 87.87),
    ("xsub_gsc_0.02_3", "xsub", 0.02, 3, 88.56),
    ("xview_ce", "xview", 0.0, 2, 90.82),
    ("xview_gsc_0.02_2", "xview", 0.02, 2, 91.37),
)


def get_config():
    return resnet3d.get_config()


def get_grid():
    rows = tuple(
        grid.Row(
            i,
            {"data.protocol": p, "loss.name": "ce", "loss.gsc.gamma": g, "loss.gsc.top_c": c},
            {"test/top1": top1},
        )
        for i, p, g, c, top1 in ROWS
    )
    return grid.Grid(
        name="table7",
        title="GSC paper Table 7: NTU RGB+D top-1 accuracy (ResNet3D-34).",
        rows=rows,
        columns=(
            grid.Column("test/top1", "video top-1 %"),
            grid.Column("test/view_top1", "clip top-1 %"),
            grid.Column("test/ece", "ECE %"),
            grid.Column("test/nll", "NLL", "nats"),
        ),
    )
