"""Paper grids: Table 1 (all losses), Table 2 (symmetric label noise), Fig. 5 (gamma x top_c sweep).

Each grid point trains in its own sub-workdir (so a re-run resumes and finished points are only
re-evaluated) and the grid writes a markdown table (ours beside the paper's) or a plot.
"""

import dataclasses
import math
import os

import jax
from tqdm import tqdm

from experiments.common import loop, losses, report
from experiments.cifar10 import train

L = losses.LossSpec
# (row id, model, loss, paper top-1 %, paper top-5 %) -- GSC paper Table 1.
TABLE1 = (
    ("alexnet_ce", "alexnet", L("ce"), 73.33, 98.01),
    ("alexnet_entropy", "alexnet", L("entropy", entropy_weight=0.02), 74.21, 98.02),
    ("alexnet_focal", "alexnet", L("focal", focal_eta=2.0), 75.10, 98.38),
    ("alexnet_ls", "alexnet", L("ls", ls_alpha=0.1), 76.31, 98.09),
    ("alexnet_ce_gsc", "alexnet", L("ce", gsc_gamma=0.05, gsc_top_c=2), 77.07, 98.00),
    ("alexnet_focal_gsc", "alexnet", L("focal", focal_eta=2.0, gsc_gamma=0.02, gsc_top_c=3),
     76.28, 98.14),
    ("alexnet_ls_gsc", "alexnet", L("ls", ls_alpha=0.1, gsc_gamma=0.03, gsc_top_c=2), 77.75, 97.60),
    ("convmixer_ce", "convmixer", L("ce"), 89.79, 99.70),
    ("convmixer_ce_gsc", "convmixer", L("ce", gsc_gamma=0.02, gsc_top_c=3), 92.47, 99.78),
)
# GSC paper Table 2: (gamma, top_c) -> top-1 % at noise rates 20/40/60/80 %; gamma 0 is CE.
NOISE_RATES = (0.2, 0.4, 0.6, 0.8)
TABLE2 = (
    ((0.0, 2), (72.51, 68.95, 63.45, 43.38)),
    ((2.0, 5), (74.89, 70.22, 62.17, 42.17)),
    ((0.8, 3), (74.81, 70.53, 62.32, 39.31)),
    ((0.2, 2), (74.24, 70.49, 63.65, 42.53)),
    ((0.05, 2), (74.02, 69.82, 63.38, 43.83)),
)


def _pct(x: float | None) -> str:
    """A fraction in percent; a diverged run's null metric reads 'diverged'."""
    return "diverged" if x is None else f"{100 * x:.2f}"


def _nats(x: float | None) -> str:
    return "diverged" if x is None else f"{x:.4f}"


def _run_point(base: train.RunConfig, dataset, workdir: str, **changes):
    """Runs one grid point; returns its summary (null metrics if it diverged, which is logged),
    or raises SystemExit if it was stopped."""
    result = train.run(dataclasses.replace(base, **changes), dataset, workdir)
    if result.status == loop.STOPPED:
        raise SystemExit(128 + result.interrupted_by if result.interrupted_by else 0)
    if result.status == loop.DIVERGED and jax.process_index() == 0:
        tqdm.write(f"warning: {workdir}: {result.message}")
    return result.summary


def run_table1(base: train.RunConfig, dataset, workdir: str) -> str:
    """Trains every Table 1 row with the paper's hyper-parameters; writes table1.md/.json."""
    rows = []
    for row_id, model, spec, paper1, paper5 in TABLE1:
        s = _run_point(base, dataset, os.path.join(workdir, "table1", row_id), model=model,
                       loss=spec)
        rows.append({"row": row_id, "model": model, "method": spec.label, "paper_top1": paper1,
                     "paper_top5": paper5, "top1": s["test_accuracy"], "top5": s["test_top5"],
                     "best_top1": s["best_test_accuracy"], "ece": s["test_ece"],
                     "nll": s["test_nll"], "epochs": s["epochs"]})
    lines = ["| model | method | epochs | top-1 % (ours, final) | best top-1 % (ours) | "
             "top-1 % (paper) | top-5 % (ours) | top-5 % (paper) | ECE % (ours) | NLL (ours) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['method']} | {r['epochs']} | {_pct(r['top1'])} | "
              f"{_pct(r['best_top1'])} | {r['paper_top1']:.2f} | {_pct(r['top5'])} | "
              f"{r['paper_top5']:.2f} | {_pct(r['ece'])} | {_nats(r['nll'])} |" for r in rows]
    return _write_table(workdir, "table1", lines, rows)


def run_table2(base: train.RunConfig, dataset, workdir: str) -> str:
    """Trains CE and the four GSC settings at noise 20/40/60/80 %; writes table2.md/.json."""
    rows = []
    for (gamma, top_c), paper in TABLE2:
        spec = dataclasses.replace(base.loss, name="ce", gsc_gamma=gamma, gsc_top_c=top_c)
        accs = []
        for rate in NOISE_RATES:
            sub = os.path.join(workdir, "table2", f"g{gamma:g}_c{top_c}_nr{int(rate * 100)}")
            accs.append(_run_point(base, dataset, sub, loss=spec, label_noise=rate)
                        ["test_accuracy"])
        rows.append({"method": spec.label, "gamma": gamma, "top_c": top_c,
                     "ours": accs, "paper": list(paper)})
    head = " | ".join(f"NR={int(100 * r)}% ours / paper" for r in NOISE_RATES)
    lines = [f"| method | {head} |", "|---|" + "---|" * len(NOISE_RATES)]
    lines += ["| " + r["method"] + " | " + " | ".join(
        f"{_pct(o)} / {p:.2f}" for o, p in zip(r["ours"], r["paper"])) + " |" for r in rows]
    return _write_table(workdir, "table2", lines, rows)


def run_sweep(base: train.RunConfig, dataset, workdir: str, gammas: tuple,
              top_cs: tuple) -> str:
    """Fig. 5: accuracy vs gamma per top_c (CE+GSC) and vs lambda (CE+Entropy); writes fig5.png."""
    sweep_dir = os.path.join(workdir, "sweep")
    ce = _run_point(base, dataset, os.path.join(sweep_dir, "ce"), loss=L("ce"))
    curves = {}
    for top_c in top_cs:
        curves[f"GSC top_c={top_c}"] = [_run_point(
            base, dataset, os.path.join(sweep_dir, f"gsc_g{g:g}_c{top_c}"),
            loss=L("ce", gsc_gamma=g, gsc_top_c=top_c))["test_accuracy"] for g in gammas]
    curves["Entropy (x = lambda)"] = [_run_point(
        base, dataset, os.path.join(sweep_dir, f"entropy_l{g:g}"),
        loss=L("entropy", entropy_weight=g))["test_accuracy"] for g in gammas]
    path = os.path.join(workdir, "fig5.png")
    if jax.process_index() == 0:  # multi-host: every process has the results, process 0 writes
        report.write_json(os.path.join(workdir, "fig5.json"),
                          {"gammas": list(gammas), "ce": ce["test_accuracy"], "curves": curves})
        nan = lambda y: math.nan if y is None else y  # noqa: E731  diverged points: gaps
        report.plot_sweep(list(gammas), {k: [nan(y) for y in ys] for k, ys in curves.items()},
                          nan(ce["test_accuracy"]), path)
    return path


def _write_table(workdir: str, name: str, lines: list, rows: list) -> str:
    """Writes the lines to WORKDIR/<name>.md and the rows to <name>.json; returns the text."""
    text = "\n".join(lines) + "\n"
    if jax.process_index() == 0:  # multi-host: every process has the rows, process 0 writes
        with open(os.path.join(workdir, f"{name}.md"), "w") as f:
            f.write(text)
        report.write_json(os.path.join(workdir, f"{name}.json"), rows)
    return text
