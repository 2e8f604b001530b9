r"""GSC paper Table 5: CosFace and ArcFace, with and without GSC, on six verification sets.

    python -m experiments.face --config experiments/face/configs/table5.py --workdir runs/t5 \
        --config.data.data_dir casia/ --config.evals.verification.val_dir=casia_bins/

The paper reports each GSC setting on one group of sets only: the left group (LFW, CALFW, CFP-FF)
and the right group (CPLFW, CFP-FP, AgeDB-30) have their own (gamma, top_c) settings. Each row
trains once and is evaluated on every set given; the paper's number stands beside ours where the
paper has one. Rows not run, and sets whose data was not given, read "not run" / "n/a".
"""

from experiments.common import grid
from experiments.common import losses
from experiments.face.configs import arcface

SET_TITLES = {
    "lfw": "LFW",
    "calfw": "CALFW",
    "cfp_ff": "CFP-FF",
    "cplfw": "CPLFW",
    "cfp_fp": "CFP-FP",
    "agedb_30": "AgeDB-30",
}
LEFT, RIGHT = ("lfw", "calfw", "cfp_ff"), ("cplfw", "cfp_fp", "agedb_30")


def _row(margin, gamma, top_c, group, values) -> grid.Row:
    scale, m = losses.MARGIN_DEFAULTS[margin]
    row_id = margin if not gamma else f"{margin}_gsc_{gamma:g}_{top_c}"
    overrides = {
        "loss.name": "ce",
        "loss.gsc.gamma": gamma,
        "loss.gsc.top_c": top_c,
        "loss.margin.name": margin,
        "loss.margin.scale": scale,
        "loss.margin.m": m,
    }
    return grid.Row(
        row_id, overrides, {f"verification/{n}/accuracy": v for n, v in zip(group, values)}
    )


ROWS = (  # paper accuracy %; the baselines have all six sets
    _row("cosface", 0, 2, LEFT + RIGHT, (99.100, 93.033, 99.429, 86.783, 92.871, 93.167)),
    _row("cosface", 0.015, 3, LEFT, (99.217, 93.267, 99.300)),
    _row("cosface", 0.025, 3, LEFT, (99.233, 93.117, 99.529)),
    _row("cosface", 0.025, 2, LEFT, (99.300, 92.850, 99.371)),
    _row("cosface", 0.05, 5, RIGHT, (87.350, 92.914, 93.750)),
    _row("cosface", 0.01, 2, RIGHT, (87.400, 93.057, 93.350)),
    _row("cosface", 0.02, 2, RIGHT, (87.483, 93.000, 93.450)),
    _row("arcface", 0, 2, LEFT + RIGHT, (99.200, 93.300, 99.414, 86.833, 93.343, 93.267)),
    _row("arcface", 0.01, 3, LEFT, (99.283, 93.417, 99.471)),
    _row("arcface", 0.03, 5, LEFT, (99.250, 93.350, 99.529)),
    _row("arcface", 0.015, 2, LEFT, (99.217, 93.383, 99.257)),
    _row("arcface", 0.025, 3, RIGHT, (86.550, 93.557, 93.700)),
    _row("arcface", 0.02, 3, RIGHT, (86.683, 93.443, 93.950)),
    _row("arcface", 0.02, 2, RIGHT, (87.050, 93.486, 93.717)),
)


def get_config():
    return arcface.get_config()


def get_grid():
    return grid.Grid(
        name="table5",
        title="GSC paper Table 5: 10-fold verification accuracy.",
        rows=ROWS,
        columns=tuple(
            grid.Column(f"verification/{n}/accuracy", f"{t} %") for n, t in SET_TITLES.items()
        ),
    )
