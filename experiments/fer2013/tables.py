"""GSC paper Table 6 (FER2013, CE and CE+GSC) with seeds, and the loss curves of its Fig. 7.

Each (row, seed) trains in its own sub-workdir WORKDIR/table6/<row>_s<seed> (a re-run resumes and
finished runs are only re-evaluated). The table gives ours (mean +- sample std over the seeds)
beside the paper's, for the test and validation splits, and per-class test accuracy.
"""

import dataclasses
import os

import jax
import numpy as np

from experiments.common import losses, report
from experiments.fer2013 import data, train

L = losses.LossSpec
# (row id, loss, paper test %, paper validation %) -- GSC paper Table 6.
TABLE6 = (
    ("ce", L("ce"), 72.12, 73.82),
    ("gsc_0.01_2", L("ce", gsc_gamma=0.01, gsc_top_c=2), 72.72, 73.25),
    ("gsc_0.015_2", L("ce", gsc_gamma=0.015, gsc_top_c=2), 72.17, 74.39),
    ("gsc_0.01_3", L("ce", gsc_gamma=0.01, gsc_top_c=3), 72.39, 74.17),
    ("gsc_0.02_3", L("ce", gsc_gamma=0.02, gsc_top_c=3), 72.25, 74.37),
)
ROW_IDS = tuple(r[0] for r in TABLE6)


def check_rows(rows) -> tuple:
    """The Table 6 rows to run (all when `rows` is empty); raises ValueError on unknown ids."""
    rows = tuple(rows or ROW_IDS)
    unknown = [r for r in rows if r not in ROW_IDS]
    if unknown:
        raise ValueError(f"unknown --table_rows {unknown}; choose from {', '.join(ROW_IDS)}.")
    return rows


def mean_std(values) -> str:
    """'mean +- std' in percent of fractions (sample std, ddof 1; only the mean for one value;
    'n/a' when a run has no value)."""
    if any(x is None for x in values):
        return "n/a"
    v = 100 * np.asarray(values, np.float64)
    if len(v) == 1:
        return f"{v[0]:.2f}"
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def run_table6(base: train.RunConfig, splits: data.FerSplits, workdir: str, seeds=(0,),
               rows=()) -> str:
    """Trains the chosen Table 6 rows for every seed; writes table6.md / .json and fig7.png."""
    rows = check_rows(rows)
    results = []
    for row_id, spec, paper_test, paper_val in TABLE6:
        if row_id not in rows:
            continue
        runs = []
        for seed in seeds:
            sub = os.path.join(workdir, "table6", f"{row_id}_s{seed}")
            result = train.run(dataclasses.replace(base, loss=spec, seed=seed), splits, sub)
            if result.interrupted_by is not None:
                raise SystemExit(128 + result.interrupted_by if result.interrupted_by else 0)
            if result.summary.get("status", "completed") != "completed":
                raise SystemExit(f"{sub}: {result.message or result.summary.get('status')}")
            runs.append((sub, result.summary))
        results.append({"row": row_id, "method": spec.label, "paper_test": paper_test,
                        "paper_val": paper_val, "seeds": list(seeds),
                        "workdirs": [w for w, _ in runs], "summaries": [s for _, s in runs]})
    usage = {"test": data.check_val_usage(base.val_usage), "val": base.val_usage}
    lines = [f"Test = {usage['test']}, validation = {usage['val']}. Ours: mean ± sample std over "
             f"seeds {', '.join(map(str, seeds))}.", "",
             "| method | epochs | test % (final) | test % (best-val model) | val % (final) | "
             "best val % | test % (paper) | val % (paper) | test ECE % | test NLL |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["summaries"]
        col = lambda key: [x[key] for x in s]  # noqa: E731
        lines.append(
            f"| {r['method']} | {s[0]['epochs']} | {mean_std(col('test_accuracy'))} | "
            f"{mean_std(col('test_accuracy_at_best_val'))} | {mean_std(col('val_accuracy'))} | "
            f"{mean_std(col('best_val_accuracy'))} | {r['paper_test']:.2f} | "
            f"{r['paper_val']:.2f} | {mean_std(col('test_ece'))} | "
            f"{np.mean(col('test_nll')):.4f} |")
    lines += ["", "Per-class test accuracy % (final model, mean over seeds):", "",
              "| method | " + " | ".join(data.EMOTIONS) + " |",
              "|---|" + "---|" * len(data.EMOTIONS)]
    for r in results:
        per_class = np.mean([x["test_per_class_accuracy"] for x in r["summaries"]], axis=0)
        lines.append(f"| {r['method']} | " + " | ".join(f"{100 * a:.1f}" for a in per_class)
                     + " |")
    text = "\n".join(lines) + "\n"
    if jax.process_index() == 0:  # multi-host: every process has the results, process 0 writes
        with open(os.path.join(workdir, "table6.md"), "w") as f:
            f.write(text)
        report.write_json(os.path.join(workdir, "table6.json"), [
            {k: v for k, v in r.items() if k != "summaries"}
            | {"summaries": [{k: v for k, v in x.items() if k != "reliability"}
                             for x in r["summaries"]]} for r in results])
        if len(results) > 1:  # Fig. 7: CE against the first GSC row, first seed
            curves = {r["method"]: report.read_jsonl(os.path.join(r["workdirs"][0],
                                                                  "metrics.jsonl"))
                      for r in results[:2]}
            report.plot_loss_curves(curves, os.path.join(workdir, "fig7.png"))
    return text
