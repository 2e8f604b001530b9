r"""A language model's output layer: chunked linear + CE + GSC against the materialised logits.

Times ``jax.jit(jax.value_and_grad(mean loss, argnums=(hidden, weight)))`` for

- ``ce``: `optax.softmax_cross_entropy_with_integer_labels` of ``hidden @ weight`` (the baseline;
  the ``[B, V]`` logits and their gradient are materialised);
- ``gsc_loss``: `gsc_jax.gsc_loss` of ``hidden @ weight`` (materialised, fused loss);
- ``linear_ce``: `gsc_jax.linear_gsc_loss` with ``gamma=0`` (chunked cross-entropy);
- ``linear_gsc``: `gsc_jax.linear_gsc_loss` (chunked CE + GSC);

at ``B x D x V`` shapes (default 2048x1024x32768 and 2048x1024x131072, float32). Every candidate
is compiled ahead of time and all are timed round-robin in one process
(`benchmarks._timing.interleaved_medians`); the table gives each median, its ratio to ``ce``, and
each compiled program's temporary memory (``.compile().memory_analysis().temp_size_in_bytes``)
with its ratio to ``ce``'s.

    python -m benchmarks.lm_head [--shapes 2048x1024x32768] [--chunk-size 4096] [--quick]
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import optax

import gsc_jax
from benchmarks import _timing

SHAPES = ((2048, 1024, 32768), (2048, 1024, 131072))
CANDIDATES = ("ce", "gsc_loss", "linear_ce", "linear_gsc")
GAMMA = 0.05


def _losses(labels, top_c, chunk_size):
    return {
        "ce": lambda h, w: optax.softmax_cross_entropy_with_integer_labels(h @ w, labels),
        "gsc_loss": lambda h, w: gsc_jax.gsc_loss(h @ w, labels, gamma=GAMMA, top_c=top_c),
        "linear_ce": lambda h, w: gsc_jax.linear_gsc_loss(
            h, w, labels, gamma=0.0, top_c=top_c, chunk_size=chunk_size
        ),
        "linear_gsc": lambda h, w: gsc_jax.linear_gsc_loss(
            h, w, labels, gamma=GAMMA, top_c=top_c, chunk_size=chunk_size
        ),
    }


def run_config(shape, top_c, dtype, chunk_size, candidates, repeats):
    """Times the candidates at one ``(B, D, V)``; returns a JSON-ready record."""
    rows, dim, vocab = shape
    keys = jax.random.split(jax.random.key(0), 3)
    hidden = jax.random.normal(keys[0], (rows, dim)).astype(dtype)
    weight = (jax.random.normal(keys[1], (dim, vocab)) / dim**0.5).astype(dtype)
    labels = jax.random.randint(keys[2], (rows,), 0, vocab)
    losses = _losses(labels, top_c, chunk_size)
    executables = {}
    for name in candidates:
        step = jax.jit(
            jax.value_and_grad(
                lambda h, w, loss=losses[name]: jnp.mean(loss(h, w).astype(jnp.float32)),
                argnums=(0, 1),
            )
        )
        executables[name] = step.lower(hidden, weight).compile()
    temp_bytes = {
        name: int(fn.memory_analysis().temp_size_in_bytes) for name, fn in executables.items()
    }
    timings = _timing.interleaved_medians(
        {name: (lambda fn=fn: fn(hidden, weight)) for name, fn in executables.items()},
        repeats=repeats,
    )
    return {
        "shape": list(shape),
        "top_c": top_c,
        "dtype": dtype,
        "chunk_size": chunk_size,
        "logits_bytes": rows * vocab * jnp.dtype(dtype).itemsize,
        "candidates": {
            name: {
                **timings[name],
                "ratio_to_ce": timings[name]["median_s"] / timings["ce"]["median_s"],
                "temp_bytes": temp_bytes[name],
                "temp_ratio_to_ce": temp_bytes[name] / max(temp_bytes["ce"], 1),
            }
            for name in candidates
        },
    }


def run(plan: dict) -> list[dict]:
    """`run_config` of every shape of `plan` (keys: shapes, top_c, dtype, chunk_size, candidates,
    repeats; defaults: the CLI's)."""
    names = plan.get("candidates", CANDIDATES)
    candidates = ["ce"] + [name for name in names if name != "ce"]
    records = []
    for shape in plan.get("shapes", SHAPES):
        records.append(
            run_config(
                tuple(shape),
                plan.get("top_c", 5),
                plan.get("dtype", "float32"),
                plan.get("chunk_size", 4096),
                candidates,
                plan.get("repeats", 5),
            )
        )
        print(f"  done {tuple(shape)} {plan.get('dtype', 'float32')}", file=sys.stderr, flush=True)
    return records


def markdown(records: list[dict]) -> str:
    """`markdown_table` with the candidates the records hold."""
    return markdown_table(records, list(records[0]["candidates"]) if records else [])


def markdown_table(records, candidates) -> str:
    header = (
        "| B x D x V | dtype | chunk | candidate | median ms | time / ce | temp MiB | temp / ce |"
    )
    lines = [header, "|" + "---|" * 8]
    for rec in records:
        for name in candidates:
            cell = rec["candidates"][name]
            lines.append(
                f"| {'x'.join(map(str, rec['shape']))} | {rec['dtype']} | {rec['chunk_size']} | "
                f"{name} | {cell['median_s'] * 1e3:.1f} | {cell['ratio_to_ce']:.2f} | "
                f"{cell['temp_bytes'] / 2**20:.1f} | {cell['temp_ratio_to_ce']:.3f} |"
            )
    return "\n".join(lines)


def _parse_shapes(text):
    return tuple(tuple(int(n) for n in item.split("x")) for item in text.split(","))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes",
        type=_parse_shapes,
        default=SHAPES,
        help="B x D x V, e.g. 2048x1024x32768,2048x1024x131072",
    )
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--top-c", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=5, help="timed samples per candidate")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one small shape (256x128x8192), 3 repeats: a smoke run",
    )
    parser.add_argument("--out", default="benchmarks/results/lm_head.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes, args.repeats = ((256, 128, 8192),), 3
    candidates = ["ce"] + [name for name in args.candidates if name != "ce"]
    machine = _timing.machine_info()
    print(f"machine: {machine}", file=sys.stderr)
    records = run(
        {
            "shapes": args.shapes,
            "top_c": args.top_c,
            "dtype": args.dtype,
            "chunk_size": args.chunk_size,
            "candidates": candidates,
            "repeats": args.repeats,
        }
    )
    machine["load_average_end"] = _timing.machine_info()["load_average"]
    print(markdown_table(records, candidates))
    _timing.write_json(
        args.out,
        {
            "benchmark": "lm_head",
            "measure": "jit(value_and_grad(mean loss)) w.r.t. hidden and weight, median seconds",
            "gamma": GAMMA,
            "machine": machine,
            "records": records,
        },
    )


if __name__ == "__main__":
    main()
