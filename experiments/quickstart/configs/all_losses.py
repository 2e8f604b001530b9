r"""The calibration-loss comparison on digits: every base loss of the registry but OLS (its
soft-label state is per run, and it is compared on ImageNet-scale data in Table 4), each without
and with GSC.

    python -m experiments.quickstart --workdir runs/qs_all \
        --config experiments/quickstart/configs/all_losses.py

CE, LS and focal with their Table 1 GSC settings, the others with CE's (gamma 0.05, top_c 2).
"""

import dataclasses

from experiments.common import losses
from experiments.quickstart.configs import default

BASE_LOSSES = tuple(n for n in losses.LOSS_NAMES if n != "ols")


def get_config():
    return default.get_config()


def get_grid():
    return dataclasses.replace(
        default.get_grid(), name="table_all", rows=default.rows_for(BASE_LOSSES)
    )
