r"""Top-c selection on the fused path: the hand-written `top_logits` against `jax.lax.top_k`.

The fused loss (`gsc_jax._fused`) selects each row's top-c logits with `_fused.select_top`:
`_fused.top_logits` (rounds of max and first-index-of-max, chunked for long rows) on the CPU
backend, `_fused.top_logits_top_k` (`jax.lax.top_k`, same results) on the others. This benchmark
times both on the current backend, side by side in one process, for

- ``select``: the selection alone, ``jit(lambda z: select(z, top_c))``;
- ``forward``: ``jit(lambda z: gsc_loss(z, labels).mean())``;
- ``value_and_grad``: ``jit(value_and_grad(lambda z: gsc_loss(z, labels).mean()))``;

with the fused loss traced once with each selection (compiled ahead of time), then every
executable timed round-robin, interleaved (`benchmarks._timing.interleaved_medians`).

    python -m benchmarks.top_c_selection [--repeats 15] [--shapes 256x10,1024x1000] [--top-c 2 5]
"""

from __future__ import annotations

import argparse
import sys

import jax

import gsc_jax
from benchmarks import _timing
from gsc_jax import _fused

SHAPES = ((256, 10), (1024, 100), (1024, 1000), (256, 32000))
TOP_CS = (2, 5)
SELECTIONS = {"top_logits": _fused.top_logits, "lax.top_k": _fused.top_logits_top_k}
MEASURES = ("select", "forward", "value_and_grad")


def _executables(select, logits, labels, top_c):
    """The three measured programs with ``select`` as the fused path's top-c, compiled."""
    original = _fused.select_top
    _fused.select_top = select
    try:

        def loss(z):
            return gsc_jax.gsc_loss(z, labels, gamma=0.05, top_c=top_c).mean()

        programs = {
            "select": jax.jit(lambda z: select(z, top_c)),
            "forward": jax.jit(loss),
            "value_and_grad": jax.jit(jax.value_and_grad(loss)),
        }
        return {name: fn.lower(logits).compile() for name, fn in programs.items()}
    finally:
        _fused.select_top = original


def run_config(shape, top_c, repeats):
    """Median times of every (selection, measure) at one shape and top_c; a JSON-ready record."""
    logits = 2.0 * jax.random.normal(jax.random.key(0), shape)
    labels = jax.random.randint(jax.random.key(1), shape[:-1], 0, shape[-1])
    calls = {}
    for selection, select in SELECTIONS.items():
        for measure, fn in _executables(select, logits, labels, top_c).items():
            calls[f"{selection} {measure}"] = lambda fn=fn: fn(logits)
    timings = _timing.interleaved_medians(calls, repeats=repeats)
    return {
        "shape": list(shape),
        "top_c": top_c,
        "median_ms": {name: t["median_s"] * 1e3 for name, t in timings.items()},
    }


def run(plan: dict) -> list[dict]:
    """`run_config` of every (shape, top_c) of `plan` (keys: shapes, top_c, repeats)."""
    records = []
    for shape in plan.get("shapes", SHAPES):
        for top_c in plan.get("top_c", TOP_CS):
            records.append(run_config(tuple(shape), top_c, plan.get("repeats", 15)))
            print(f"  done {tuple(shape)} top_c={top_c}", file=sys.stderr, flush=True)
    return records


def markdown_table(records) -> str:
    names = list(SELECTIONS)
    header = (
        "| shape | top_c | "
        + " | ".join(f"{measure}: {' / '.join(names)} ms" for measure in MEASURES)
        + " |"
    )
    lines = [header, "|" + "---|" * (2 + len(MEASURES))]
    for rec in records:
        cells = [f"{rec['shape'][0]}x{rec['shape'][1]}", str(rec["top_c"])]
        for measure in MEASURES:
            cells.append(" / ".join(f"{rec['median_ms'][f'{n} {measure}']:.3f}" for n in names))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parse_shapes(text):
    return tuple(tuple(int(n) for n in item.split("x")) for item in text.split(","))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed samples per program")
    parser.add_argument("--shapes", type=_parse_shapes, default=SHAPES)
    parser.add_argument("--top-c", type=int, nargs="+", default=list(TOP_CS))
    parser.add_argument("--out", default="benchmarks/results/top_c_selection.json")
    args = parser.parse_args(argv)
    machine = _timing.machine_info()
    print(f"machine: {machine}", file=sys.stderr)
    records = run({"shapes": args.shapes, "top_c": args.top_c, "repeats": args.repeats})
    machine["load_average_end"] = _timing.machine_info()["load_average"]
    print(markdown_table(records))
    _timing.write_json(
        args.out,
        {
            "benchmark": "top_c_selection",
            "measure": "median seconds per call of compiled programs, in ms",
            "machine": machine,
            "args": {
                "repeats": args.repeats,
                "top_c": args.top_c,
                "shapes": [list(s) for s in args.shapes],
            },
            "records": records,
        },
    )
    print(f"\nwrote {args.out}", file=sys.stderr)


markdown = markdown_table

if __name__ == "__main__":
    main()
