r"""Every benchmark that applies to this backend, at the shapes that matter there, in one command.

    python -m benchmarks.suite --out DIR                  # CPU: the small CPU shapes
    python -m benchmarks.suite --out DIR --budget_s 480   # e.g. one GPU: bf16 first, then f32
    python -m benchmarks.suite --out DIR --smoke          # tiny shapes, about a minute on a CPU
    python -m benchmarks.suite --render DIR/suite.json    # rewrite docs/performance.md's tables

The benchmarks (loss_overhead, top_c_selection, train_step, resnet_step, lm_head, face_step,
fer2013_step) each give `run(plan) -> records` and `markdown(records)`; the suite runs a list of
items (a benchmark at one plan: shapes, dtype, repeats) in one process, in priority order. Each
item carries an estimate of its cost on that kind of machine, compile included; with
`--budget_s` an item whose estimate (scaled by how far the finished items' times have run from
their estimates) does not fit in what is left is skipped, so the least important items are
dropped first and the run stays inside the budget. Skipped and failed items are recorded with
the reason. Times within an item are measured side by side (ratios to the baseline) and given
in ms for context.

Writes DIR/suite.json (machine, every item's plan, status, time and records) and DIR/suite.md.
`--render JSON` rewrites, in `--doc` (default docs/performance.md), the blocks between
``<!-- suite:BACKEND/BENCHMARK -->`` and ``<!-- /suite:BACKEND/BENCHMARK -->`` that the JSON has
(BACKEND: cpu, gpu or tpu, the backend of the run), leaving everything else as it is.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import re
import sys
import time

BENCHMARKS = (
    "loss_overhead",
    "top_c_selection",
    "train_step",
    "resnet_step",
    "lm_head",
    "face_step",
    "fer2013_step",
)
DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "performance.md"
LO_SHAPES = [[256, 10], [1024, 1000], [64, 32000], [8, 128000]]
TC_SHAPES = [[256, 10], [1024, 100], [1024, 1000], [256, 32000]]


def _item(benchmark: str, tag: str, estimate_s: float, plan: dict) -> dict:
    return {
        "name": f"{benchmark}/{tag}",
        "benchmark": benchmark,
        "estimate_s": estimate_s,
        "plan": plan,
    }


def smoke_items() -> list[dict]:
    """Tiny shapes: every benchmark's code path on a CPU in about a minute (times meaningless)."""
    return [
        _item(
            "loss_overhead",
            "float32",
            6,
            {
                "shapes": [[64, 100]],
                "top_c": [2],
                "dtypes": ["float32"],
                "candidates": ["ce", "gsc_loss", "gsc_loss_reference"],
                "repeats": 3,
            },
        ),
        _item("train_step", "float32", 10, {"batch": 8, "repeats": 3}),
        _item("top_c_selection", "float32", 5, {"shapes": [[64, 100]], "top_c": [2], "repeats": 3}),
        _item(
            "lm_head", "float32", 5, {"shapes": [[64, 32, 1024]], "chunk_size": 256, "repeats": 2}
        ),
        _item(
            "fer2013_step",
            "float32",
            20,
            {
                "width": 4,
                "hidden": 32,
                "train_crops": 1,
                "crop": 16,
                "batch_size": 4,
                "eval_batch_size": 4,
                "repeats": 2,
            },
        ),
        _item(
            "face_step",
            "float32",
            30,
            {
                "model": "iresnet18",
                "width": 8,
                "depths": [1, 1, 1, 1],
                "image_size": 32,
                "batch": 2,
                "identities": 20,
                "repeats": 2,
            },
        ),
        _item(
            "resnet_step",
            "float32",
            35,
            {
                "model": "resnet18",
                "width": 8,
                "image_size": 32,
                "batch": 2,
                "classes": 10,
                "repeats": 2,
            },
        ),
    ]


def cpu_items() -> list[dict]:
    """The CPU shapes of the benchmarks' own defaults (fewer repeats), most important first."""
    return [
        _item(
            "loss_overhead",
            "float32",
            60,
            {"shapes": LO_SHAPES, "top_c": [2, 5], "dtypes": ["float32"], "repeats": 10},
        ),
        _item("train_step", "float32", 45, {"batch": 128, "repeats": 30}),
        _item(
            "loss_overhead",
            "bfloat16",
            80,
            {"shapes": LO_SHAPES, "top_c": [2, 5], "dtypes": ["bfloat16"], "repeats": 10},
        ),
        _item(
            "fer2013_step",
            "float32",
            60,
            {"width": 8, "hidden": 512, "train_crops": 1, "epochs": 8, "repeats": 5},
        ),
        _item("face_step", "float32", 150, {"batch": 8, "repeats": 3}),
        _item(
            "top_c_selection", "float32", 150, {"shapes": TC_SHAPES, "top_c": [2, 5], "repeats": 5}
        ),
        _item("resnet_step", "float32", 300, {"batch": 8, "repeats": 3}),
        _item("lm_head", "float32", 200, {"shapes": [[2048, 1024, 131072]], "repeats": 2}),
    ]


def accelerator_items() -> list[dict]:
    """GPU / TPU: bfloat16 at the real batch sizes first, then float32; LM head 8192x4096x131072.
    Estimates are for one current GPU, compile included (guesses until a first run)."""
    lo = {
        "shapes": LO_SHAPES,
        "top_c": [2, 5],
        "candidates": ["ce", "gsc_loss", "gsc_loss_reference"],
        "repeats": 20,
    }
    lm = {"shapes": [[8192, 4096, 131072]], "repeats": 5}
    items = []
    for dtype, bf16 in (("bfloat16", True), ("float32", False)):
        items += [
            _item("loss_overhead", dtype, 40, {**lo, "dtypes": [dtype]}),
            _item("lm_head", dtype, 40, {**lm, "dtype": dtype}),
            _item("train_step", dtype, 20, {"batch": 128, "repeats": 50, "dtype": dtype}),
            _item("resnet_step", dtype, 120, {"batch": 256, "repeats": 5, "bf16": bf16}),
            _item("face_step", dtype, 120, {"batch": 512, "repeats": 5, "bf16": bf16}),
            _item("fer2013_step", dtype, 60, {"repeats": 5, "bf16": bf16}),
        ]
        if dtype == "bfloat16":  # the top-c choice is per backend, not per dtype: once
            items.append(
                _item(
                    "top_c_selection",
                    "float32",
                    30,
                    {"shapes": TC_SHAPES, "top_c": [2, 5], "repeats": 15},
                )
            )
    return items


def plan_items(backend: str, smoke: bool) -> list[dict]:
    """The items in priority order (index 0 first), each with its priority."""
    items = smoke_items() if smoke else cpu_items() if backend == "cpu" else accelerator_items()
    for priority, item in enumerate(items, 1):
        item["priority"] = priority
    return items


def run_items(items: list[dict], budget_s: float | None, start: float) -> list[dict]:
    """Runs the items in order, skipping those that do not fit in the budget; returns them with
    'status' (done, skipped, failed), 'elapsed_s', 'records' or 'reason'."""
    spent, estimated = 0.0, 0.0
    for i, item in enumerate(items, 1):
        scale = min(max(spent / estimated, 0.5), 3.0) if estimated else 1.0
        expected = item["estimate_s"] * scale
        used = time.perf_counter() - start
        head = f"[{i}/{len(items)}] {item['name']} (priority {item['priority']})"
        if budget_s is not None and used + expected > budget_s:
            item.update(
                status="skipped",
                reason=f"budget: about {expected:.0f} s expected, "
                f"{max(budget_s - used, 0):.0f} s of {budget_s:.0f} s left",
            )
            print(f"{head}: skipped, {item['reason']}", file=sys.stderr, flush=True)
            continue
        print(
            f"{head}: running, about {expected:.0f} s expected ({used:.0f} s used)",
            file=sys.stderr,
            flush=True,
        )
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{item['benchmark']}")
            item["records"] = module.run(dict(item["plan"]))
            item["status"] = "done"
        except Exception as error:  # pylint: disable=broad-except
            item.update(status="failed", reason=f"{type(error).__name__}: {error}")
        item["elapsed_s"] = time.perf_counter() - t0
        spent += item["elapsed_s"]
        estimated += item["estimate_s"]
        print(
            f"{head}: {item['status']} in {item['elapsed_s']:.1f} s"
            + (f" ({item['reason']})" if item["status"] == "failed" else ""),
            file=sys.stderr,
            flush=True,
        )
    return items


def header(payload: dict) -> str:
    """One line: where and how the numbers were measured."""
    s, m = payload["suite"], payload["machine"]
    load = m.get("load_average") or [float("nan")]
    end = payload.get("load_average_end") or [float("nan")]
    smoke = (
        " **smoke run: tiny shapes, XLA optimisations off, the times mean nothing**"
        if s["smoke"]
        else ""
    )
    return (
        f"_`{s['command']}` on {m['device']} ({m['backend']}, {m['device_count']} "
        f"device(s), {m['usable_cpus']} usable CPUs, load average {load[0]:.1f} at the "
        f"start, {end[0]:.1f} at the end), {s['started_utc']}, jax {m['jax']}; "
        f"{s['elapsed_s']:.0f} s in all._{smoke}"
    )


def block(payload: dict, benchmark: str) -> str:
    """The markdown of one benchmark's items: its tables, then its skipped and failed items."""
    items = [it for it in payload["items"] if it["benchmark"] == benchmark]
    records = [r for it in items if it["status"] == "done" for r in it["records"]]
    lines = [header(payload), ""]
    if records:
        module = importlib.import_module(f"benchmarks.{benchmark}")
        lines.append(module.markdown(records))
    for it in items:
        if it["status"] != "done":
            lines.append(f"\n{it['name']}: {it['status']} ({it['reason']}).")
    if not items:
        lines.append("Not part of this run.")
    return "\n".join(lines)


def markdown(payload: dict) -> str:
    """DIR/suite.md: every benchmark's block under a heading."""
    parts = [f"# Benchmark suite ({payload['suite']['backend']})", ""]
    for benchmark in BENCHMARKS:
        parts += [f"## {benchmark}", "", block(payload, benchmark), ""]
    return "\n".join(parts)


def render(payload: dict, doc: pathlib.Path) -> list[str]:
    """Rewrites the doc's `<!-- suite:BACKEND/NAME -->` blocks of this run's backend; returns the
    names rewritten."""
    backend = payload["suite"]["backend"]
    text = doc.read_text()
    done = []
    for benchmark in BENCHMARKS:
        name = f"{backend}/{benchmark}"
        pattern = re.compile(
            rf"(<!-- suite:{re.escape(name)} -->\n).*?(\n<!-- /suite:"
            rf"{re.escape(name)} -->)",
            re.S,
        )
        if pattern.search(text):
            content = block(payload, benchmark)
            text = pattern.sub(lambda m, c=content: m.group(1) + c + m.group(2), text)
            done.append(name)
    doc.write_text(text)
    return done


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text!r}")
    return value


def _benchmarks(text: str) -> tuple:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark(s) {unknown or text!r}; choose from {', '.join(BENCHMARKS)}"
        )
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.suite",
        description=__doc__.split("\n\n")[0],
        epilog="Renders with --render JSON [--doc FILE]; runs with --out DIR.",
    )
    parser.add_argument("--out", help="directory for suite.json and suite.md")
    parser.add_argument(
        "--budget_s",
        type=_positive,
        default=None,
        help="whole-run time budget in seconds, compile included; the least "
        "important items that do not fit are skipped",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny shapes, XLA optimisations off: a check that every benchmark "
        "runs (about a minute on a CPU)",
    )
    parser.add_argument(
        "--only",
        type=_benchmarks,
        default=None,
        help=f"comma-separated subset of {','.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="a suite.json whose tables replace the marker blocks of --doc",
    )
    parser.add_argument("--doc", default=str(DOC), help="the document --render rewrites")
    args = parser.parse_args(argv)
    if args.render:
        if args.out or args.smoke or args.budget_s or args.only:
            parser.error("--render takes only --doc (it runs nothing).")
        path = pathlib.Path(args.render)
        try:
            payload = json.loads(path.read_text())
            payload["suite"]["backend"], payload["items"]  # pylint: disable=pointless-statement
        except (OSError, ValueError, KeyError, TypeError) as error:
            parser.error(f"--render {args.render!r} is not a suite.json: {error}")
        doc = pathlib.Path(args.doc)
        if not doc.is_file():
            parser.error(f"--doc {args.doc!r} is not a file.")
        names = render(payload, doc)
        if not names:
            parser.error(
                f"{args.doc} has no <!-- suite:{payload['suite']['backend']}/NAME --> "
                "block to rewrite."
            )
        print(f"rewrote {', '.join(names)} in {doc}")
        return
    if not args.out:
        parser.error("--out DIR is required (or --render JSON).")
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {args.out!r} exists and is not a directory.")

    start = time.perf_counter()
    import jax  # pylint: disable=import-outside-toplevel

    from benchmarks import _timing  # pylint: disable=import-outside-toplevel

    if args.smoke:
        jax.config.update("jax_disable_most_optimizations", True)
    backend = jax.default_backend()
    items = plan_items(backend, args.smoke)
    if args.only:
        items = [it for it in items if it["benchmark"] in args.only]
    started = _timing.machine_info()
    command = "python -m benchmarks.suite " + " ".join(argv if argv is not None else sys.argv[1:])
    print(
        f"{len(items)} items on {started['device']} ({backend}); budget {args.budget_s or 'none'}",
        file=sys.stderr,
        flush=True,
    )
    items = run_items(items, args.budget_s, start)
    payload = {
        "suite": {
            "command": command,
            "backend": backend,
            "smoke": args.smoke,
            "budget_s": args.budget_s,
            "started_utc": started["timestamp_utc"],
            "elapsed_s": time.perf_counter() - start,
            "disable_most_optimizations": args.smoke,
        },
        "machine": started,
        "load_average_end": _timing.machine_info()["load_average"],
        "items": items,
        "skipped": [it["name"] for it in items if it["status"] == "skipped"],
        "failed": [it["name"] for it in items if it["status"] == "failed"],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "suite.json").write_text(json.dumps(payload, indent=1, default=_jsonable) + "\n")
    (out / "suite.md").write_text(markdown(payload) + "\n")
    print(
        f"wrote {out / 'suite.json'} and {out / 'suite.md'}: "
        f"{sum(it['status'] == 'done' for it in items)} done, {len(payload['skipped'])} "
        f"skipped, {len(payload['failed'])} failed in {payload['suite']['elapsed_s']:.0f} s",
        file=sys.stderr,
    )
    if payload["failed"]:
        sys.exit(1)


def _jsonable(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


if __name__ == "__main__":
    main()
