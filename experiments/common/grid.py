"""One grid runner for the paper's tables and for sweeps: rows x seeds, a markdown + JSON table.

A table or sweep is a config file with `get_config()` (the run every row starts from; command-line
`--config.x=y` overrides apply to all rows) and `get_grid()` returning a `Grid`: its rows, each a
set of config overrides with the paper's numbers, the columns to report and the seeds. Every
(row, seed) trains in WORKDIR/<grid name>/<row id>[_s<seed>] (a re-run resumes it, a finished one
is only re-read); with `vmap_seeds` a row's seeds train together as one population run (in-memory
data only). One divergence policy: a diverged run's cells read "diverged" and the rest of the
table still runs; a stopped run (a signal, `run.stop_after_steps`) stops the grid, and the same
command resumes it. Rows not selected (`--rows`) and not finished earlier read "not run". The
table gives ours as mean +- sample std over the seeds (ddof 1) beside the paper's.
"""

import dataclasses
import json
import math
import os
from typing import Callable

import jax
import numpy as np

from experiments.common import config as cfg
from experiments.common import console
from experiments.common import loop
from experiments.common import report

FORMATS = {
    "pct": lambda x: f"{100 * x:.2f}",
    "err": lambda x: f"{100 - 100 * x:.2f}",  # an accuracy fraction as an error in percent
    "nats": lambda x: f"{x:.4f}",
    "raw": lambda x: f"{x:.4g}",
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One row: an id (its sub-workdir), config overrides ('loss.gsc.gamma': 0.02, ...) and the
    paper's values by column key (in the column's unit, e.g. percent)."""

    id: str
    overrides: dict
    paper: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Column:
    """A reported quantity.

    Attributes:
      key: a summary key ('test/top1', 'test/top1@best'), or 'max:<metric>' for the best value
        over the epochs of metrics.jsonl.
      title: the header.
      fmt: a key of FORMATS.
    """

    key: str
    title: str
    fmt: str = "pct"


@dataclasses.dataclass(frozen=True)
class Plot:
    """A figure of columns against a numeric override: one curve per `series` value, one panel
    per `panel` value (paper Fig. 5's form), mean +- standard error over the seeds. `baseline`
    rows are drawn as dashed lines; on a log axis a curve's point at x = 0 is drawn as a dotted
    line in its colour; `rows` keeps only the rows whose id starts with one of its prefixes."""

    x: str
    series: str = ""
    panel: str = ""
    columns: tuple = ("test/top1",)
    log_x: bool = True
    baseline: tuple = ()
    rows: tuple = ()
    file: str = "sweep.png"


@dataclasses.dataclass(frozen=True)
class Grid:
    """A table or sweep.

    Attributes:
      name: file stem of the outputs and the sub-folder of the runs.
      title: the table's first line.
      rows: the Rows.
      columns: the Columns.
      seeds: the seeds every row trains with.
      vmap_seeds: train a row's seeds together (one population run).
      vmap_gammas: with `vmap_seeds`, also train these GSC strengths together: each row becomes
        one population run of (gamma, seed) members (gamma traced: one compiled program), and
        reports one row per gamma, '<row id>_g<gamma>' with 'loss.gsc.gamma' among its
        overrides (a strength sweep at the cost of a few runs).
      plots: figures to draw.
      extra: `extra(results, workdir) -> markdown` appended to the table (per-class tables, loss
        curves, ...); `results` are the `CellResult`s.
    """

    name: str
    title: str
    rows: tuple
    columns: tuple
    seeds: tuple = (0,)
    vmap_seeds: bool = False
    vmap_gammas: tuple = ()
    plots: tuple = ()
    extra: Callable | None = None


@dataclasses.dataclass
class CellResult:
    """A row's outcome: its config, per-seed workdirs and summaries (None: not run)."""

    row: Row
    label: str
    workdirs: list
    summaries: list
    members: list | None = None  # a population's members this row reports (vmap_gammas)

    def values(self, key: str) -> list | None:
        """Per-seed values of a column key; None when a seed has not completed."""
        out = []
        for workdir, summary in zip(self.workdirs, self.summaries):
            if summary is None or summary.get("status") != loop.COMPLETED:
                return None
            if key.startswith("max:"):
                metric = key[4:]
                series = [
                    r[metric]
                    for r in report.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
                    if r.get(metric) is not None
                ]
                if self.members is not None:
                    series = [[v[i] for i in self.members] for v in series]
                out.append(
                    np.max(np.asarray(series, np.float64), axis=0).tolist() if series else math.nan
                )
            else:
                out.append(summary.get(key))
        flat = []
        for v in out:  # a population run's list is one value per seed
            flat.extend(v if isinstance(v, list) else [v])
        return flat

    def status(self) -> str:
        statuses = [s.get("status") if s else "not run" for s in self.summaries]
        for status in ("diverged", "failed", "stopped", "not run"):
            if status in statuses:
                return status
        if self.summaries and any(np.any(s.get("diverged_at_step", 0)) for s in self.summaries):
            return "diverged"
        return loop.COMPLETED


def mean_std(values, fmt: str) -> str:
    """'mean ± std' (sample std over seeds) in the column's format; one value alone."""
    f = FORMATS[fmt]
    v = np.asarray(values, np.float64)
    if len(v) == 1:
        return f(v[0])
    return f"{f(v.mean())} ± {f(v.std(ddof=1))}"


def check_rows(grid: Grid, rows) -> tuple:
    """The row ids to run (all when `rows` is empty); ValueError for unknown ids."""
    ids = tuple(r.id for r in grid.rows)
    rows = tuple(rows or ids)
    unknown = [r for r in rows if r not in ids]
    if unknown:
        raise ValueError(f"--rows: unknown rows {unknown}; choose from {', '.join(ids)}.")
    return rows


def row_workdirs(grid: Grid, row: Row, workdir: str) -> list:
    base = os.path.join(workdir, grid.name, row.id)
    if grid.vmap_seeds or len(grid.seeds) == 1:
        return [base]
    return [f"{base}_s{seed}" for seed in grid.seeds]


def run(grid: Grid, base_config, workdir: str, rows=(), cli_overrides=None) -> str:
    """Trains the selected rows for every seed, then writes the table; returns its markdown.

    `cli_overrides` (the command line's --config.x=y) are applied after each row's own, so that
    e.g. --config.epochs=6 shortens every row.

    Raises:
      SystemExit: a run was stopped (exit status 128 + signal, or 0 for stop_after_steps).
      ValueError: a bad override or config, before its row trains.
    """
    selected = check_rows(grid, rows)
    results = []
    for row in grid.rows:
        config = cfg.apply_overrides(
            cfg.apply_overrides(base_config, row.overrides), cli_overrides or {}
        )
        workdirs = row_workdirs(grid, row, workdir)
        if grid.vmap_gammas:
            results += run_strengths(grid, row, config, workdirs[0], row.id in selected)
            continue
        label = _label(config)
        if row.id in selected:
            runs = (
                [(workdirs[0], {"seeds": grid.seeds})]
                if grid.vmap_seeds
                else [(w, {"seed": s}) for w, s in zip(workdirs, grid.seeds)]
            )
            for sub, how in runs:
                run_config = (
                    cfg.apply_overrides(config, {"seed": how["seed"]}) if "seed" in how else config
                )
                result = loop.train_and_evaluate(run_config, sub, seeds=how.get("seeds"))
                if result.status == loop.STOPPED:
                    raise SystemExit(128 + result.interrupted_by if result.interrupted_by else 0)
                if result.status != loop.COMPLETED and jax.process_index() == 0:
                    console.say(f"warning: {sub}: {result.message}")
        results.append(CellResult(row, label, workdirs, [report.read_summary(w) for w in workdirs]))
    return write(grid, results, workdir)


def run_strengths(grid: Grid, row: Row, config, workdir: str, selected: bool) -> list:
    """One population run of the row's (gamma, seed) members; a CellResult per gamma."""
    gammas = tuple(float(g) for g in grid.vmap_gammas)
    members = [(g, s) for g in gammas for s in grid.seeds]
    config = cfg.apply_overrides(config, {"loss.gsc.gamma": max(gammas)})
    if selected:
        result = loop.train_and_evaluate(
            config, workdir, seeds=[s for _, s in members], gammas=[g for g, _ in members]
        )
        if result.status == loop.STOPPED:
            raise SystemExit(128 + result.interrupted_by if result.interrupted_by else 0)
    summary = report.read_summary(workdir)
    out = []
    for gamma in gammas:
        index = [i for i, (g, _) in enumerate(members) if g == gamma]
        virtual = Row(f"{row.id}_g{gamma:g}", {**row.overrides, "loss.gsc.gamma": gamma}, row.paper)
        label = _label(cfg.apply_overrides(config, {"loss.gsc.gamma": gamma}))
        out.append(
            CellResult(
                virtual,
                label,
                [workdir],
                [None if summary is None else member_summary(summary, index)],
                members=index,
            )
        )
    return out


def member_summary(summary: dict, index: list) -> dict:
    """The summary of a population's members `index`: every per-member list sliced."""
    count = len(summary.get("seeds") or [])
    out = {}
    for key, value in summary.items():
        if isinstance(value, list) and count and len(value) == count:
            out[key] = [value[i] for i in index]
        else:
            out[key] = value
    return out


def _label(config) -> str:
    from experiments.common import losses  # pylint: disable=import-outside-toplevel

    return losses.LossSpec.from_config(config.loss).label


def cell(result: CellResult, column: Column) -> str:
    status = result.status()
    if status != loop.COMPLETED:
        return status
    values = result.values(column.key)
    if values is None or any(v is None for v in values):
        return "n/a"
    return mean_std(values, column.fmt)


def write(grid: Grid, results: list, workdir: str) -> str:
    """Writes WORKDIR/<name>.md and .json (and the plots); returns the markdown."""
    header = ["row", "method"]
    with_paper = any(r.row.paper for r in results)
    for c in grid.columns:
        header.append(f"{c.title} (ours)" if with_paper else c.title)
        if any(c.key in r.row.paper for r in results):
            header.append(f"{c.title} (paper)")
    lines = [
        grid.title,
        "",
        f"{'Ours: m' if with_paper else 'M'}ean ± sample std over seeds "
        f"{', '.join(map(str, grid.seeds))}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in results:
        cells = [r.row.id, r.label]
        for c in grid.columns:
            cells.append(cell(r, c))
            if any(c.key in x.row.paper for x in results):
                paper = r.row.paper.get(c.key)
                cells.append("-" if paper is None else f"{paper:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if grid.extra is not None:
        text += "\n" + grid.extra(results, workdir)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, f"{grid.name}.md"), "w") as f:
            f.write(text)
        report.write_json(
            os.path.join(workdir, f"{grid.name}.json"),
            {
                "title": grid.title,
                "seeds": list(grid.seeds),
                "rows": [
                    {
                        "row": r.row.id,
                        "method": r.label,
                        "overrides": r.row.overrides,
                        "paper": r.row.paper,
                        "status": r.status(),
                        "workdirs": r.workdirs,
                        "values": {c.key: r.values(c.key) for c in grid.columns},
                    }
                    for r in results
                ],
            },
        )
        for plot in grid.plots:
            plot_grid(plot, results, os.path.join(workdir, plot.file))
    return text


def _errorbars(ax, points, label, log_x):
    """Draws mean +- standard error of [(x, values)]; x = 0 on a log axis as a dotted line."""
    stats = [
        (x, np.nanmean(v), np.nanstd(v, ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0)
        for x, v in points
    ]
    shown = [p for p in stats if p[0] > 0 or not log_x]
    line = ax.errorbar(
        [p[0] for p in shown],
        [p[1] for p in shown],
        yerr=[p[2] for p in shown],
        marker="o",
        ms=3,
        capsize=2,
        label=label,
    )
    for x, mean, _ in stats:
        if log_x and x <= 0:
            ax.axhline(mean, color=line[0].get_color(), ls=":", lw=1)


def plot_grid(plot: Plot, results: list, path: str) -> None:
    """Columns against the `plot.x` override, mean +- standard error over seeds."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    curves = [
        r
        for r in results
        if plot.x in r.row.overrides
        and r.row.id not in plot.baseline
        and (not plot.rows or r.row.id.startswith(plot.rows))
    ]
    key = lambda v: (v is None, str(type(v)), v)  # noqa: E731
    panels = sorted(
        {r.row.overrides.get(plot.panel) for r in curves} if plot.panel else {None}, key=key
    )
    fig, axes = plt.subplots(
        len(plot.columns),
        len(panels),
        squeeze=False,
        figsize=(4.2 * len(panels), 3.2 * len(plot.columns)),
    )
    for j, panel in enumerate(panels):
        in_panel = [r for r in curves if not plot.panel or r.row.overrides.get(plot.panel) == panel]
        series = sorted(
            {r.row.overrides.get(plot.series) for r in in_panel} if plot.series else {None}, key=key
        )
        for i, column in enumerate(plot.columns):
            ax = axes[i][j]
            for s in series:
                points = sorted(
                    (r.row.overrides[plot.x], r.values(column))
                    for r in in_panel
                    if (not plot.series or r.row.overrides.get(plot.series) == s)
                    and r.values(column)
                )
                if points:
                    _errorbars(
                        ax,
                        points,
                        f"{plot.series.split('.')[-1]} = {s}" if plot.series else None,
                        plot.log_x,
                    )
            for k, base in enumerate(plot.baseline):
                r = next(
                    (
                        x
                        for x in results
                        if x.row.id == base
                        and (not plot.panel or x.row.overrides.get(plot.panel) == panel)
                    ),
                    None,
                )
                values = r.values(column) if r else None
                if values:
                    ax.axhline(np.nanmean(values), color=f"C{7 + k}", ls="--", lw=1, label=r.label)
            if plot.log_x:
                ax.set_xscale("log")
            ax.set_xlabel(plot.x + (" (dotted: 0)" if plot.log_x else ""))
            ax.set_ylabel(column)
            if plot.panel:
                ax.set_title(f"{plot.panel} = {panel}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def results_json(workdir: str, name: str) -> dict:
    """A grid's JSON, as `write` wrote it."""
    with open(os.path.join(workdir, f"{name}.json")) as f:
        return json.load(f)
