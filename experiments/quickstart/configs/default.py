r"""Offline quickstart: what GSC does to accuracy and calibration next to other training losses.

    python -m experiments.quickstart --workdir runs/quickstart
    python -m experiments.quickstart --workdir runs/qs_noise --config.data.label_noise=0.4
    python -m experiments.quickstart --workdir runs/qs_all \
        --config experiments/quickstart/configs/all_losses.py

A small CNN on scikit-learn's bundled digits (nothing downloaded), three seeds per loss trained
together (one population run per loss, `jax.vmap`): CE, CE+GSC, LS, LS+GSC, focal and focal+GSC
at the GSC paper's Table 1 hyper-parameters; Adam lr 1e-3, batch 64, 20 epochs. The table gives
test accuracy, ECE (15 bins), classwise ECE, smooth ECE (4096-bin histogram), NLL, Brier score and
AURC (4096 bins), mean +- std over the seeds; every row's workdir holds its reliability diagram
(seeds pooled), and risk_coverage.png draws every loss on one axes.
"""

import os

from experiments.common import config as base
from experiments.common import grid
from experiments.common.data import memory

# GSC (gamma, top_c) per base loss: the GSC paper's Table 1 settings for CE, LS and focal loss;
# CE's for the losses the paper does not combine with GSC.
GSC_SETTINGS = {"ce": (0.05, 2), "ls": (0.03, 2), "focal": (0.02, 3)}
DEFAULT_GSC_SETTING = (0.05, 2)
COLUMNS = (
    grid.Column("test/top1", "accuracy %"),
    grid.Column("test/ece", "ECE %"),
    grid.Column("test/classwise_ece", "classwise ECE %"),
    grid.Column("test/smooth_ece", "smooth ECE %"),
    grid.Column("test/nll", "NLL", "nats"),
    grid.Column("test/brier", "Brier", "nats"),
    grid.Column("test/aurc", "AURC %"),
)


def get_config():
    config = base.base_config()
    config.task = "experiments.quickstart.task"
    memory.add_subset_fields(config.data)
    config.epochs = 20
    config.batch_size = 64
    config.eval_batch_size = 540
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.evals = base.classification_evals(
        ("test",), metrics=("classwise_ece", "fine_bins", "brier")
    )
    return config


def rows_for(base_losses) -> tuple:
    """Each base loss without GSC, then with its GSC setting (`GSC_SETTINGS`)."""
    rows = []
    for name in base_losses:
        gamma, top_c = GSC_SETTINGS.get(name, DEFAULT_GSC_SETTING)
        rows.append(grid.Row(name, {"loss.name": name}))
        rows.append(
            grid.Row(
                f"{name}_gsc", {"loss.name": name, "loss.gsc.gamma": gamma, "loss.gsc.top_c": top_c}
            )
        )
    return tuple(rows)


def risk_coverage_figure(results, workdir: str) -> str:
    """Every loss's pooled risk-coverage curve on one axes (risk_coverage.png); a loss and its
    +GSC variant share a colour, the GSC one dashed."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

    from gsc_jax import plots  # pylint: disable=import-outside-toplevel

    done = [r for r in results if r.status() == "completed"]
    if not done:
        return ""
    fig = Figure(figsize=(9, 6), layout="constrained")
    ax = fig.subplots()
    bases = list(dict.fromkeys(r.row.overrides["loss.name"] for r in done))
    colours = matplotlib.colormaps["tab10" if len(bases) <= 10 else "tab20"]
    for r in done:
        plots.risk_coverage_curve(
            r.summaries[0]["test/risk_coverage"],
            ax,
            label=r.label,
            title="risk-coverage, test split, seeds pooled",
        )
        line = ax.lines[-1]
        line.set_color(colours(bases.index(r.row.overrides["loss.name"])))
        line.set_linestyle("--" if r.row.overrides.get("loss.gsc.gamma") else "-")
    ax.legend(fontsize=6, ncol=2)
    path = os.path.join(workdir, "risk_coverage.png")
    fig.savefig(path, dpi=120)
    return "risk_coverage.png: every loss's risk-coverage curve, seeds pooled.\n"


def get_grid():
    return grid.Grid(
        name="table",
        title="Digits (scikit-learn, 1,257 train / 540 test), SmallCNN, 20 epochs.",
        rows=rows_for(("ce", "ls", "focal")),
        columns=COLUMNS,
        seeds=(0, 1, 2),
        vmap_seeds=True,
        extra=risk_coverage_figure,
    )
