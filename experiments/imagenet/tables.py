"""GSC paper Tables 3 (ImageNet-1K, ResNet-50/101) and 4 (Flowers-102, ResNet-50).

Each row trains in its own sub-workdir WORKDIR/table{3,4}/<row id> (a re-run resumes, a finished
row is only re-evaluated) and the table is written as markdown and JSON beside the paper's numbers.
Rows not selected with --rows and not finished earlier read "not run".
"""

import dataclasses
import os

import jax

from experiments.common import loop, losses, report
from experiments.imagenet import train

L = losses.LossSpec
# (row id, model, loss, paper top-1 error %, paper top-5 error %): Table 3, 100 epochs.
TABLE3 = (
    ("rn50_ce", "resnet50", L("ce"), 23.03, 6.55),
    ("rn50_ce_gsc", "resnet50", L("ce", gsc_gamma=0.02, gsc_top_c=7), 22.49, 6.35),
    ("rn101_ce", "resnet101", L("ce"), 21.26, 5.66),
    ("rn101_ce_gsc", "resnet101", L("ce", gsc_gamma=0.02, gsc_top_c=5), 20.79, 5.46),
)
# Table 3's rows quoted from Zhang et al. (2021), 250 epochs: (model, method, top-1 err, top-5 err).
TABLE3_QUOTED = (
    ("RN-50", "CE", 23.68, 7.05), ("RN-50", "LS", 22.82, 6.66),
    ("RN-50", "CutOut", 22.93, 6.66), ("RN-50", "OLS", 22.28, 6.39),
    ("RN-101", "CE", 21.87, 6.29), ("RN-101", "LS", 21.27, 5.85),
    ("RN-101", "CutOut", 20.72, 5.51), ("RN-101", "OLS", 20.85, 5.50),
)
# (row id, loss, paper top-1 %, paper top-5 %): Table 4, ResNet-50 on Flowers-102.
TABLE4 = (
    ("ce", L("ce"), 90.69, 97.57),
    ("ce_gsc", L("ce", gsc_gamma=0.05, gsc_top_c=9), 92.36, 98.10),
    ("ls", L("ls", ls_alpha=0.1), 92.42, 98.07),
    ("ls_gsc", L("ls", ls_alpha=0.1, gsc_gamma=0.05, gsc_top_c=3), 93.12, 98.28),
    ("ols", L("ols"), 92.86, 98.45),
    ("ols_gsc", L("ols", gsc_gamma=0.005, gsc_top_c=11), 93.49, 98.05),
)


def row_ids(table: int) -> tuple:
    return tuple(r[0] for r in (TABLE3 if table == 3 else TABLE4))


def check_rows(table: int, rows) -> None:
    """Raises ValueError for --rows without --table, or ids that are not rows of the table."""
    if rows and not table:
        raise ValueError("--rows needs --table 3 or --table 4.")
    if table:
        unknown = sorted(set(rows) - set(row_ids(table)))
        if unknown:
            raise ValueError(f"unknown --rows {unknown} for Table {table}; choose from "
                             f"{', '.join(row_ids(table))}.")


def _cell(summary, key, subtract=None) -> str:
    """A metric of a row in percent (or 100 - it); 'not run' / 'diverged' / 'stopped'."""
    if summary is None:
        return "not run"
    if summary.get("status") != loop.COMPLETED:
        return summary.get("status", "not run")
    value = 100.0 * summary[key]
    return f"{subtract - value:.2f}" if subtract is not None else f"{value:.2f}"


def _rows(table: int) -> tuple:
    """(row id, model, loss, paper top-1, paper top-5) of a table."""
    if table == 3:
        return TABLE3
    return tuple((r, "resnet50", s, p1, p5) for r, s, p1, p5 in TABLE4)


def write_table(table: int, workdir: str) -> str:
    """Writes WORKDIR/table{3,4}.md and .json from the rows' summary.json files (rows without one
    read 'not run'); returns the markdown path."""
    results = []
    for row_id, model, loss, paper1, paper5 in _rows(table):
        s = report.read_summary(os.path.join(workdir, f"table{table}", row_id))
        done = s is not None and s.get("status") == loop.COMPLETED
        results.append({"row": row_id, "model": model, "method": loss.label, "paper_top1": paper1,
                        "paper_top5": paper5, "status": s and s.get("status"),
                        **{k: (s[k] if done else None) for k in (
                            "test_accuracy", "test_top5", "best_test_accuracy", "test_ece",
                            "epochs", "image_size", "dataset", "images_per_s")}})
        results[-1]["summary"] = s
    if table == 3:
        lines = ["| model | method | epochs | top-1 err % (ours) | top-1 err % (paper) | "
                 "top-5 err % (ours) | top-5 err % (paper) | ECE % (ours) |",
                 "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['method']} | {r['epochs'] or 'not run'} | "
                  f"{_cell(r['summary'], 'test_accuracy', 100)} | {r['paper_top1']:.2f} | "
                  f"{_cell(r['summary'], 'test_top5', 100)} | {r['paper_top5']:.2f} | "
                  f"{_cell(r['summary'], 'test_ece')} |" for r in results]
        lines += ["", "Quoted in the paper from Zhang et al. (2021), 250 epochs (not run here):",
                  "", "| model | method | top-1 err % | top-5 err % |", "|---|---|---|---|"]
        lines += [f"| {m} | {n} | {e1:.2f} | {e5:.2f} |" for m, n, e1, e5 in TABLE3_QUOTED]
    else:
        lines = ["| method | epochs | top-1 % (ours, final) | best top-1 % (ours) | "
                 "top-1 % (paper) | top-5 % (ours) | top-5 % (paper) | ECE % (ours) |",
                 "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['epochs'] or 'not run'} | "
                  f"{_cell(r['summary'], 'test_accuracy')} | "
                  f"{_cell(r['summary'], 'best_test_accuracy')} | {r['paper_top1']:.2f} | "
                  f"{_cell(r['summary'], 'test_top5')} | {r['paper_top5']:.2f} | "
                  f"{_cell(r['summary'], 'test_ece')} |" for r in results]
    for r in results:
        del r["summary"]
    datasets = sorted({r["dataset"] for r in results if r["dataset"]})
    sizes = sorted({r["image_size"] for r in results if r["image_size"]})
    header = (f"Table {table}: rows run on {', '.join(datasets) or 'nothing yet'}"
              f"{' at ' + ', '.join(f'{s} px' for s in sizes) if sizes else ''}.")
    path = os.path.join(workdir, f"table{table}.md")
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            f.write(header + "\n\n" + "\n".join(lines) + "\n")
        report.write_json(os.path.join(workdir, f"table{table}.json"), {"rows": results})
    return path


def run_table(table: int, base: train.RunConfig, workdir: str, source, rows=()) -> str:
    """Trains the selected rows (all when `rows` is empty), then `write_table`.

    Raises SystemExit when a row was stopped (resume with the same command).
    """
    selected = set(rows or row_ids(table))
    for row_id, model, loss, _, _ in _rows(table):
        if row_id in selected:
            sub = os.path.join(workdir, f"table{table}", row_id)
            result = train.run(dataclasses.replace(base, model=model, loss=loss), sub, source)
            if result.status == loop.STOPPED:
                raise SystemExit(128 + result.interrupted_by if result.interrupted_by else 0)
    return write_table(table, workdir)
