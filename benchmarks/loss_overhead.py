r"""Forward+backward cost of cross-entropy + GSC relative to optax's cross-entropy alone.

Times ``jax.jit(jax.value_and_grad(lambda z: loss(z).mean()))`` with respect to the logits for

- ``ce``: `optax.softmax_cross_entropy_with_integer_labels` (the baseline);
- ``gsc_loss``: `gsc_jax.gsc_loss`, CE + gamma * GSC on the fused path (the default);
- ``gsc_loss_reference``: `gsc_jax.gsc_loss_reference`, the plain-autodiff implementation;
- ``gsc_term_fused``: the GSC term alone on the fused path, `gsc_jax.gsc_term_fused`;
- ``gsc_term``: the GSC term alone by autodiff, `gsc_jax.gsc_term`;

at (batch, classes) in {(256, 10), (1024, 1000), (64, 32000), (8, 128000)}, top_c in {2, 5},
float32 and bfloat16 logits. All candidates of a configuration are compiled first, then timed
round-robin in one process (`benchmarks._timing.interleaved_medians`); the table gives medians
and the ratio to ``ce``, plus each compiled program's temporary memory
(``.lower().compile().memory_analysis().temp_size_in_bytes``).

    python -m benchmarks.loss_overhead [--repeats 30] [--shapes 1024x1000,64x32000] [--quick]
"""

from __future__ import annotations

import argparse
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
CANDIDATES = ("ce", "gsc_loss", "gsc_loss_reference", "gsc_term_fused", "gsc_term")
TARGETS = {(1024, 1000): 1.5, (64, 32000): 1.5}
"""Target ratio of gsc_loss to ce per shape (issue 3); every other shape: 2.0."""


def _losses(labels, top_c):
    return {
        "ce": lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels),
        "gsc_loss": lambda z: gsc_jax.gsc_loss(z, labels, gamma=GAMMA, top_c=top_c),
        "gsc_loss_reference": lambda z: gsc_jax.gsc_loss_reference(
            z, labels, gamma=GAMMA, top_c=top_c
        ),
        "gsc_term_fused": lambda z: gsc_jax.gsc_term_fused(z, top_c=top_c),
        "gsc_term": lambda z: gsc_jax.gsc_term(z, top_c=top_c),
    }


def _forward_backward(loss):
    return jax.jit(jax.value_and_grad(lambda z: jnp.mean(loss(z).astype(jnp.float32))))


def run_config(shape, top_c, dtype, candidates, repeats):
    """Times the candidates at one (shape, top_c, dtype); returns a JSON-ready record."""
    key_logits, key_labels = jax.random.split(jax.random.key(0))
    logits = (2.0 * jax.random.normal(key_logits, shape)).astype(dtype)
    labels = jax.random.randint(key_labels, shape[:-1], 0, shape[-1])
    losses = _losses(labels, top_c)
    functions = {name: _forward_backward(losses[name]) for name in candidates}
    temp_bytes = {
        name: int(fn.lower(logits).compile().memory_analysis().temp_size_in_bytes)
        for name, fn in functions.items()
    }
    timings = _timing.interleaved_medians(
        {name: (lambda fn=fn: fn(logits)) for name, fn in functions.items()}, repeats=repeats
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
    """A time table (median ms and ratio to ce) and a temporary-memory table."""
    others = [name for name in candidates if name != "ce"]
    header = "| shape | top_c | dtype | ce ms | " + " | ".join(others) + " |"
    rule = "|" + "---|" * (4 + len(others))
    lines = ["Median forward+backward time, ms (ratio to ce):", "", header, rule]
    for rec in records:
        cells = rec["candidates"]
        row = [
            f"{rec['shape'][0]}x{rec['shape'][1]}",
            str(rec["top_c"]),
            rec["dtype"],
            f"{cells['ce']['median_s'] * 1e3:.3f}",
        ]
        row += [
            f"{cells[name]['median_s'] * 1e3:.3f} ({cells[name]['ratio_to_ce']:.2f}x)"
            for name in others
        ]
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
        row += [f"{rec['candidates'][name]['temp_bytes'] / 1024:.0f}" for name in candidates]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def target_report(records) -> list[str]:
    """One line per configuration: the gsc_loss / ce ratio against its target."""
    lines = []
    for rec in records:
        if "gsc_loss" not in rec["candidates"]:
            continue
        shape = tuple(rec["shape"])
        target = TARGETS.get(shape, 2.0)
        ratio = rec["candidates"]["gsc_loss"]["ratio_to_ce"]
        verdict = "met" if ratio <= target else "MISSED"
        lines.append(
            f"{shape[0]}x{shape[1]} top_c={rec['top_c']} {rec['dtype']}: gsc_loss/ce = "
            f"{ratio:.2f} (target <= {target}) {verdict}"
        )
    return lines


def _parse_shapes(text):
    return tuple(tuple(int(n) for n in item.split("x")) for item in text.split(","))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed samples per candidate")
    parser.add_argument(
        "--shapes", type=_parse_shapes, default=SHAPES, help="e.g. 1024x1000,64x32000"
    )
    parser.add_argument("--top-c", type=int, nargs="+", default=list(TOP_CS))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
    parser.add_argument(
        "--quick", action="store_true", help="5 repeats, float32 only, top_c=5 only (a smoke run)"
    )
    parser.add_argument("--out", default="benchmarks/results/loss_overhead.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.dtypes, args.top_c = 5, ["float32"], [5]
    candidates = ["ce"] + [name for name in args.candidates if name != "ce"]
    machine = _timing.machine_info()
    print(f"machine: {machine}", file=sys.stderr)
    records = []
    for shape in args.shapes:
        for top_c in args.top_c:
            for dtype in args.dtypes:
                records.append(run_config(shape, top_c, dtype, candidates, args.repeats))
                print(f"done {shape} top_c={top_c} {dtype}", file=sys.stderr, flush=True)
    machine["load_average_end"] = _timing.machine_info()["load_average"]
    print(markdown_tables(records, candidates))
    print()
    print("\n".join(target_report(records)))
    _timing.write_json(
        args.out,
        {
            "benchmark": "loss_overhead",
            "measure": "jit(value_and_grad(mean loss)) w.r.t. logits, median seconds per call",
            "gamma": GAMMA,
            "machine": machine,
            "args": {k: v for k, v in vars(args).items() if k != "shapes"}
            | {"shapes": [list(s) for s in args.shapes]},
            "records": records,
        },
    )
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
