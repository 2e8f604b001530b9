"""GSC paper Table 5: CosFace and ArcFace, with and without GSC, on six verification sets.

The paper reports each GSC setting on one group of sets only: the left group (LFW, CALFW, CFP-FF)
and the right group (CPLFW, CFP-FP, AgeDB-30) have their own (gamma, top_c) settings. Each row
trains once, in WORKDIR/table5/<row id> (a re-run resumes; a finished row is only re-read), and is
evaluated on every set that was given; the table shows the paper's number beside ours where the
paper has one. Rows not selected with --rows and not finished earlier, and sets whose data was not
given, read "not run".
"""

import dataclasses
import os

import jax

from experiments.common import loop, losses, report
from experiments.face import data, train

L = losses.LossSpec
SET_TITLES = {"lfw": "LFW", "calfw": "CALFW", "cfp_ff": "CFP-FF", "cplfw": "CPLFW",
              "cfp_fp": "CFP-FP", "agedb_30": "AgeDB-30"}
LEFT, RIGHT = ("lfw", "calfw", "cfp_ff"), ("cplfw", "cfp_fp", "agedb_30")


def _spec(margin: str, gamma: float = 0.0, top_c: int = 2) -> losses.LossSpec:
    scale, m = losses.MARGIN_DEFAULTS[margin]
    return L("ce", gsc_gamma=gamma, gsc_top_c=top_c, margin=margin, margin_scale=scale,
             margin_m=m)


def _row(margin, gamma, top_c, group, values):
    row_id = margin if not gamma else f"{margin}_gsc_{gamma:g}_{top_c}"
    return row_id, _spec(margin, gamma, top_c), dict(zip(group, values))


# (row id, loss, {set: paper accuracy %}); the baselines have all six sets.
TABLE5 = (
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


def row_ids() -> tuple:
    return tuple(r[0] for r in TABLE5)


def check_rows(table: int, rows) -> None:
    """Raises ValueError for --rows without --table 5, or ids that are not rows of Table 5."""
    if table not in (0, 5):
        raise ValueError(f"--table must be 5, got {table}.")
    if rows and not table:
        raise ValueError("--rows needs --table 5.")
    unknown = sorted(set(rows) - set(row_ids()))
    if unknown:
        raise ValueError(f"unknown --rows {unknown}; choose from {', '.join(row_ids())}.")


def _ours(summary: dict | None, name: str) -> str:
    if summary is None:
        return "not run"
    if summary.get("status") != loop.COMPLETED:
        return summary.get("status", "not run")
    value = summary.get(f"{name}_accuracy")
    if value is None:
        return "not run"
    return f"{100 * value:.3f} ± {100 * summary[f'{name}_accuracy_std']:.3f}"


def write_table(workdir: str) -> str:
    """Writes WORKDIR/table5.md and table5.json from the rows' summary.json files; returns the
    markdown path."""
    results, lines = [], []
    header = "| method | " + " | ".join(f"{SET_TITLES[n]} % (ours) | {SET_TITLES[n]} % (paper)"
                                        for n in data.TABLE5_SETS) + " |"
    lines += [header, "|---|" + "---|---|" * len(data.TABLE5_SETS)]
    for row_id, spec, paper in TABLE5:
        s = report.read_summary(os.path.join(workdir, "table5", row_id))
        cells = [f"{_ours(s, n)} | {paper[n]:.3f}" if n in paper else f"{_ours(s, n)} | -"
                 for n in data.TABLE5_SETS]
        lines.append(f"| {spec.label} | " + " | ".join(cells) + " |")
        done = s is not None and s.get("status") == loop.COMPLETED
        results.append({"row": row_id, "method": spec.label, "paper": paper,
                        "status": s and s.get("status"),
                        "ours": {n: (s.get(f"{n}_accuracy") if done else None)
                                 for n in data.TABLE5_SETS},
                        **{k: (s.get(k) if done else None) for k in (
                            "epochs", "model", "dataset", "num_identities", "image_size")}})
    trained = sorted({f"{r['model']} on {r['num_identities']} identities, {r['epochs']} epochs"
                      for r in results if r["model"]})
    text = ("Table 5: 10-fold verification accuracy (mean ± std over folds). Rows run: "
            f"{'; '.join(trained) or 'none yet'}.\n\n" + "\n".join(lines) + "\n")
    path = os.path.join(workdir, "table5.md")
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        report.write_json(os.path.join(workdir, "table5.json"), {"rows": results})
    return path


def run_table(base: train.RunConfig, workdir: str, source, sets: list, rows=()) -> str:
    """Trains the selected rows (all when `rows` is empty), then `write_table`.

    Raises SystemExit when a row was stopped (resume with the same command).
    """
    selected = set(rows or row_ids())
    for row_id, spec, _ in TABLE5:
        if row_id in selected:
            sub = os.path.join(workdir, "table5", row_id)
            result = train.run(dataclasses.replace(base, loss=spec), sub, source, sets)
            if result.status == loop.STOPPED:
                raise SystemExit(128 + result.interrupted_by if result.interrupted_by else 0)
    return write_table(workdir)
