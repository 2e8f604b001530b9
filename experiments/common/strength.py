"""Where does GSC act? Paired differences of a strength sweep against gamma = 0, per cell.

A strength sweep (`configs/strength.py`) trains, for each cell (base loss, top_c, label-noise
rate), one population of (gamma, seed) members in which gamma = 0 is the base loss alone. Members
of one seed start from the same initialisation and see the same batches whatever their gamma, so
the effect of a strength is read from paired differences: for a metric m and seed s,
d_s = m(gamma, s) - m(0, s); the table gives mean(d) +- its standard error std(d, ddof 1) /
sqrt(n), and a strength *changes* m when |mean(d)| > 2 standard errors. Beside them: the
diagnostics of the last epoch (`losses.make_objective`): the batch mean of gamma * f next to the
base loss, and the ratio of the GSC term's gradient norm to the base loss's (w.r.t. the logits).
"""

import math
import os

import numpy as np

from experiments.common import report

METRICS = (("test/top1", "accuracy", 100.0), ("test/ece", "ECE", 100.0), ("test/nll", "NLL", 1.0))
DIAGNOSTICS = ("train/base_loss", "train/gsc_weighted", "train/gsc_grad_ratio")


def paired_difference(values, baseline) -> tuple:
    """(mean, standard error) of values - baseline over paired seeds (SE nan for one seed)."""
    d = np.asarray(values, np.float64) - np.asarray(baseline, np.float64)
    se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else math.nan
    return float(d.mean()), float(se)


def changes(mean: float, se: float, threshold: float = 2.0) -> bool:
    """Whether a paired difference exceeds `threshold` standard errors."""
    return bool(np.isfinite(se) and se > 0 and abs(mean) > threshold * se) or bool(
        se == 0 and mean != 0
    )


def cells(results) -> dict:
    """{cell overrides without gamma (a tuple of items): {gamma: CellResult}}."""
    out = {}
    for r in results:
        key = tuple(sorted((k, v) for k, v in r.row.overrides.items() if k != "loss.gsc.gamma"))
        out.setdefault(key, {})[r.row.overrides["loss.gsc.gamma"]] = r
    return out


def last_epoch(result, key: str) -> list | None:
    """The key's per-member values in the row's last metrics.jsonl record."""
    records = report.read_jsonl(os.path.join(result.workdirs[0], "metrics.jsonl"))
    if not records or key not in records[-1]:
        return None
    values = records[-1][key]
    values = values if isinstance(values, list) else [values]
    return [values[i] for i in result.members] if result.members is not None else values


def smallest_acting_gamma(by_gamma: dict, metric: str) -> float | None:
    """The smallest gamma > 0 whose paired difference in `metric` exceeds 2 standard errors."""
    base = by_gamma.get(0.0)
    if base is None or base.values(metric) is None:
        return None
    for gamma in sorted(g for g in by_gamma if g > 0):
        values = by_gamma[gamma].values(metric)
        if values is not None and changes(*paired_difference(values, base.values(metric))):
            return gamma
    return None


def _cell_title(key) -> str:
    d = dict(key)
    noise = d.get("data.label_noise", 0.0)
    params = "".join(
        f", {k.split('.')[-1]} {v:g}"
        for k, v in d.items()
        if k.startswith("loss.")
        and k not in ("loss.name", "loss.gsc.top_c")
        and isinstance(v, (int, float))
    )
    return (
        f"{d.get('loss.name', 'ce')}{params}, top_c {d.get('loss.gsc.top_c', 2)}, "
        f"label noise {round(100 * noise)} %"
    )


def reading(results, workdir: str) -> str:
    """Markdown: per cell and gamma, the paired differences and the diagnostics; then the
    smallest gamma that changes accuracy or ECE by more than two standard errors."""
    del workdir
    lines = [
        "Paired differences against gamma = 0 (same seeds): mean ± standard error over "
        "seeds; * marks |mean| > 2 SE. Diagnostics: last epoch, mean over seeds.",
        "",
    ]
    summary = [
        "| cell | smallest gamma changing accuracy | smallest gamma changing ECE |",
        "|---|---|---|",
    ]
    for key, by_gamma in cells(results).items():
        base = by_gamma.get(0.0)
        if base is None or base.status() != "completed":
            continue
        lines += [
            f"**{_cell_title(key)}**",
            "",
            "| gamma | "
            + " | ".join(f"Δ {t}" for _, t, _ in METRICS)
            + " | base loss | gamma·f | grad-norm ratio |",
            "|---|" + "---|" * (len(METRICS) + 3),
        ]
        for gamma in sorted(by_gamma):
            r = by_gamma[gamma]
            if gamma == 0 or r.status() != "completed":
                continue
            cells_ = []
            for metric, _, scale in METRICS:
                mean, se = paired_difference(r.values(metric), base.values(metric))
                star = "*" if changes(mean, se) else ""
                cells_.append(
                    f"{scale * mean:+.2f} ± {scale * se:.2f}{star}"
                    if scale != 1
                    else f"{mean:+.4f} ± {se:.4f}{star}"
                )
            diag = [last_epoch(r, k) for k in DIAGNOSTICS]
            cells_ += [f"{np.nanmean(v):.3g}" if v else "n/a" for v in diag]
            lines.append(f"| {gamma:g} | " + " | ".join(cells_) + " |")
        lines.append("")
        acc = smallest_acting_gamma(by_gamma, "test/top1")
        ece = smallest_acting_gamma(by_gamma, "test/ece")
        summary.append(
            f"| {_cell_title(key)} | {'none' if acc is None else f'{acc:g}'} | "
            f"{'none' if ece is None else f'{ece:g}'} |"
        )
    return "\n".join(summary + [""] + lines) + "\n"
