r"""Forward+backward cost of cross-entropy + GSC relative to optax's cross-entropy alone.

Times ``jax.jit(jax.value_and_grad(lambda z: loss(z).mean()))`` with respect to the logits for

- ``ce``: `optax.softmax_cross_entropy_with_integer_labels` (the baseline);
- ``gsc_loss``: `gsc_jax.gsc_loss`, CE + gamma * GSC, the default (fused, XLA operations);
- ``gsc_loss_cpu_kernel``: the same with `gsc_jax.cpu_kernel.enable` (opt-in C++ row kernels;
  skipped without a C++ compiler, or off the CPU backend);
- ``gsc_loss_reference``: ``gsc_loss(..., implementation="reference")``, plain autodiff;
- ``gsc_term``, ``gsc_term_reference``: the GSC term alone, fused and by autodiff (not in the
  default set; ``--candidates``);

at (batch, classes) in {(256, 10), (1024, 1000), (64, 32000), (8, 128000)}, top_c in {2, 5},
float32 and bfloat16 logits. Every candidate of a configuration is compiled ahead of time (the
kernel switch applies when a function is traced, so both paths live in one process as compiled
executables), then all are timed round-robin, interleaved, in one process
(`benchmarks._timing.interleaved_medians`); the table gives the median time of ``ce`` and every
other candidate's ratio to it, plus each compiled program's temporary memory
(``.compile().memory_analysis().temp_size_in_bytes``). Ratios measured side by side are the
robust figure on a shared machine; absolute times move with its load.

    python -m benchmarks.loss_overhead [--repeats 20] [--shapes 1024x1000,64x32000] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import sys

import jax
import jax.numpy as jnp
import optax

import gsc_jax
from benchmarks import _timing

SHAPES = ((256, 10), (1024, 1000), (64, 32000), (8, 128000))
TOP_CS = (2, 5)
DTYPES = ("float32", "bfloat16")
GAMMA = 0.05
CANDIDATES = (
    "ce",
    "gsc_loss",
    "gsc_loss_cpu_kernel",
    "gsc_loss_reference",
    "gsc_term",
    "gsc_term_reference",
)
DEFAULT_CANDIDATES = ("ce", "gsc_loss", "gsc_loss_cpu_kernel", "gsc_loss_reference")
KERNEL_CANDIDATES = ("gsc_loss_cpu_kernel",)


def _losses(labels, top_c):
    gsc_loss = functools.partial(gsc_jax.gsc_loss, gamma=GAMMA, top_c=top_c)
    return {
        "ce": lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels),
        "gsc_loss": lambda z: gsc_loss(z, labels),
        "gsc_loss_cpu_kernel": lambda z: gsc_loss(z, labels),
        "gsc_loss_reference": lambda z: gsc_loss(z, labels, implementation="reference"),
        "gsc_term": lambda z: gsc_jax.gsc_term(z, top_c=top_c),
        "gsc_term_reference": lambda z: gsc_jax.gsc_term(
            z, top_c=top_c, implementation="reference"
        ),
    }


def _compile(loss, logits):
    step = jax.jit(jax.value_and_grad(lambda z: jnp.mean(loss(z).astype(jnp.float32))))
    return step.lower(logits).compile()


def compile_candidates(losses, names, logits):
    """Ahead-of-time executables of every candidate: the kernel ones with the kernel enabled."""
    compiled = {
        name: _compile(losses[name], logits) for name in names if name not in KERNEL_CANDIDATES
    }
    kernel_names = [name for name in names if name in KERNEL_CANDIDATES]
    if kernel_names:
        gsc_jax.cpu_kernel.enable()
        try:
            for name in kernel_names:
                compiled[name] = _compile(losses[name], logits)
        finally:
            gsc_jax.cpu_kernel.disable()
    return {name: compiled[name] for name in names}


def run_config(shape, top_c, dtype, candidates, repeats):
    """Times the candidates at one (shape, top_c, dtype); returns a JSON-ready record."""
    key_logits, key_labels = jax.random.split(jax.random.key(0))
    logits = (2.0 * jax.random.normal(key_logits, shape)).astype(dtype)
    labels = jax.random.randint(key_labels, shape[:-1], 0, shape[-1])
    executables = compile_candidates(_losses(labels, top_c), candidates, logits)
    temp_bytes = {
        name: int(fn.memory_analysis().temp_size_in_bytes) for name, fn in executables.items()
    }
    timings = _timing.interleaved_medians(
        {name: (lambda fn=fn: fn(logits)) for name, fn in executables.items()}, repeats=repeats
    )
    baseline = timings["ce"]["median_s"]
    return {
        "shape": list(shape),
        "top_c": top_c,
        "dtype": dtype,
        "logits_bytes": int(logits.size * logits.dtype.itemsize),
        "candidates": {
            name: {
                **timings[name],
                "ratio_to_ce": timings[name]["median_s"] / baseline,
                "temp_bytes": temp_bytes[name],
            }
            for name in candidates
        },
    }


def markdown_tables(records, candidates) -> str:
    """A time table (ce's median ms, the others' ratios to it) and a temporary-memory table."""
    others = [name for name in candidates if name != "ce"]
    header = "| shape | top_c | dtype | ce ms | " + " | ".join(f"{n} / ce" for n in others) + " |"
    rule = "|" + "---|" * (4 + len(others))
    lines = [
        "Median forward+backward time: optax CE in ms, the others as ratios to it:",
        "",
        header,
        rule,
    ]
    for rec in records:
        cells = rec["candidates"]
        row = [
            f"{rec['shape'][0]}x{rec['shape'][1]}",
            str(rec["top_c"]),
            rec["dtype"],
            f"{cells['ce']['median_s'] * 1e3:.3f}",
        ]
        row += [f"{cells[name]['ratio_to_ce']:.2f}" if name in cells else "n/a" for name in others]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Compiled temporary memory, KiB (logits size for scale):", ""]
    lines.append("| shape | top_c | dtype | logits | " + " | ".join(candidates) + " |")
    lines.append("|" + "---|" * (4 + len(candidates)))
    for rec in records:
        row = [
            f"{rec['shape'][0]}x{rec['shape'][1]}",
            str(rec["top_c"]),
            rec["dtype"],
            f"{rec['logits_bytes'] / 1024:.0f}",
        ]
        row += [
            f"{rec['candidates'][name]['temp_bytes'] / 1024:.0f}"
            if name in rec["candidates"]
            else "n/a"
            for name in candidates
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _parse_shapes(text):
    return tuple(tuple(int(n) for n in item.split("x")) for item in text.split(","))


def _kernel_available() -> str | None:
    """None if the CPU kernel can be enabled here, else why not."""
    if jax.default_backend() != "cpu":
        return f"the CPU kernel applies to the CPU backend only (backend: {jax.default_backend()})"
    try:
        gsc_jax.cpu_kernel.enable()
    except gsc_jax.cpu_kernel.BuildError as error:
        return str(error)
    gsc_jax.cpu_kernel.disable()
    return None


def run(plan: dict) -> list[dict]:
    """Times every (shape, top_c, dtype) of `plan` (keys: shapes, top_c, dtypes, candidates,
    repeats; defaults: this module's); a record each. A kernel candidate that cannot run here is
    left out, with the reason in every record's 'skipped_candidates'."""
    shapes = [tuple(s) for s in plan.get("shapes", SHAPES)]
    names = plan.get("candidates", DEFAULT_CANDIDATES)
    candidates = ["ce"] + [name for name in names if name != "ce"]
    skipped = {}
    if any(name in KERNEL_CANDIDATES for name in candidates):
        reason = _kernel_available()
        if reason is not None:
            skipped = {name: reason for name in candidates if name in KERNEL_CANDIDATES}
            candidates = [name for name in candidates if name not in KERNEL_CANDIDATES]
            print(f"skipping {sorted(skipped)}: {reason}", file=sys.stderr)
    records = []
    for shape in shapes:
        for top_c in plan.get("top_c", TOP_CS):
            for dtype in plan.get("dtypes", DTYPES):
                record = run_config(shape, top_c, dtype, candidates, plan.get("repeats", 20))
                records.append({**record, "skipped_candidates": skipped})
                print(f"  done {shape} top_c={top_c} {dtype}", file=sys.stderr, flush=True)
    return records


def markdown(records: list[dict]) -> str:
    """`markdown_tables` of the records, with the candidates they hold."""
    candidates = list(records[0]["candidates"]) if records else ["ce"]
    return markdown_tables(records, candidates)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed samples per candidate")
    parser.add_argument(
        "--shapes", type=_parse_shapes, default=SHAPES, help="e.g. 1024x1000,64x32000"
    )
    parser.add_argument("--top-c", type=int, nargs="+", default=list(TOP_CS))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument(
        "--candidates", nargs="+", default=list(DEFAULT_CANDIDATES), choices=CANDIDATES
    )
    parser.add_argument(
        "--quick", action="store_true", help="5 repeats, float32 only, top_c=5 only (a smoke run)"
    )
    parser.add_argument("--out", default="benchmarks/results/loss_overhead.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.dtypes, args.top_c = 5, ["float32"], [5]
    machine = _timing.machine_info()
    print(f"machine: {machine}", file=sys.stderr)
    records = run(
        {
            "shapes": args.shapes,
            "top_c": args.top_c,
            "dtypes": args.dtypes,
            "candidates": args.candidates,
            "repeats": args.repeats,
        }
    )
    skipped = records[0]["skipped_candidates"] if records else {}
    candidates = list(records[0]["candidates"]) if records else ["ce"]
    machine["load_average_end"] = _timing.machine_info()["load_average"]
    print(markdown_tables(records, candidates))
    _timing.write_json(
        args.out,
        {
            "benchmark": "loss_overhead",
            "measure": "jit(value_and_grad(mean loss)) w.r.t. logits, median seconds per call",
            "gamma": GAMMA,
            "machine": machine,
            "args": {k: v for k, v in vars(args).items() if k != "shapes"}
            | {"shapes": [list(s) for s in args.shapes]},
            "skipped": skipped,
            "records": records,
        },
    )
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
