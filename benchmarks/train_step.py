r"""Cost of the GSC term in a whole training step: one jitted SGD step of a small CIFAR convnet.

A Flax Linen convnet (conv 32-64-128, 3x3, ReLU, 2x2 average pooling, dense 10) on a batch of
128 CIFAR-sized images (32x32x3), one `optax.sgd` step with momentum, timed for

- ``ce``: `optax.softmax_cross_entropy_with_integer_labels`;
- ``gsc_loss``: `gsc_jax.gsc_loss` (the default, fused CE + gamma * GSC, gamma=0.05, top_c=2);
- ``gsc_loss_cpu_kernel``: the same with `gsc_jax.cpu_kernel.enable` (opt-in; skipped without a
  C++ compiler);
- ``gsc_loss_reference``: ``gsc_loss(..., implementation="reference")`` (plain autodiff);

compiled ahead of time, then timed round-robin in one process
(`benchmarks._timing.interleaved_medians`); each step time is reported as a ratio to ``ce``'s.

    python -m benchmarks.train_step [--repeats 100] [--batch 128] [--top-c 2]
"""

from __future__ import annotations

import argparse
import functools
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import gsc_jax
from benchmarks import _timing

NUM_CLASSES = 10


class SmallConvNet(nn.Module):
    """Three 3x3 conv blocks (32, 64, 128 channels) with average pooling, then a dense head;
    computes in `dtype` (float32 parameters), float32 logits as the experiments' loop gives."""

    dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        x = x.astype(self.dtype)
        for features in (32, 64, 128):
            x = nn.relu(nn.Conv(features, (3, 3), dtype=self.dtype)(x))
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        logits = nn.Dense(NUM_CLASSES, dtype=self.dtype)(x.reshape(x.shape[0], -1))
        return logits.astype(jnp.float32)


def make_step(model, tx, loss):
    """A jitted SGD step ``(params, opt_state, images, labels) -> (params, opt_state, loss)``."""

    def step(params, opt_state, images, labels):
        def objective(p):
            return jnp.mean(loss(model.apply(p, images), labels))

        value, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return jax.jit(step)


def run(plan: dict) -> list[dict]:
    """Times the step per loss at `plan` (keys: batch, top_c, gamma, repeats, dtype); one
    record. The CPU-kernel candidate runs on the CPU backend only, when the kernel builds."""
    batch, top_c = plan.get("batch", 128), plan.get("top_c", 2)
    gamma, dtype = plan.get("gamma", 0.05), plan.get("dtype", "float32")
    model, tx = SmallConvNet(dtype=dtype), optax.sgd(0.01, momentum=0.9)
    key_params, key_images, key_labels = jax.random.split(jax.random.key(0), 3)
    images = jax.random.normal(key_images, (batch, 32, 32, 3))
    labels = jax.random.randint(key_labels, (batch,), 0, NUM_CLASSES)
    params = model.init(key_params, images[:1])
    opt_state = tx.init(params)
    gsc_loss = functools.partial(gsc_jax.gsc_loss, gamma=gamma, top_c=top_c)
    losses = {
        "ce": optax.softmax_cross_entropy_with_integer_labels,
        "gsc_loss": gsc_loss,
        "gsc_loss_reference": functools.partial(gsc_loss, implementation="reference"),
    }
    step_args = (params, opt_state, images, labels)
    steps = {
        name: make_step(model, tx, loss).lower(*step_args).compile()
        for name, loss in losses.items()
    }
    skipped = {}
    if jax.default_backend() != "cpu":
        skipped["gsc_loss_cpu_kernel"] = "the CPU kernel applies to the CPU backend only"
    else:
        try:  # the kernel switch applies at tracing: compile this one with it enabled
            gsc_jax.cpu_kernel.enable()
        except gsc_jax.cpu_kernel.BuildError as error:
            skipped["gsc_loss_cpu_kernel"] = str(error)
            print(f"skipping gsc_loss_cpu_kernel: {error}", file=sys.stderr)
        else:
            try:
                steps["gsc_loss_cpu_kernel"] = (
                    make_step(model, tx, gsc_loss).lower(*step_args).compile()
                )
            finally:
                gsc_jax.cpu_kernel.disable()
    timings = _timing.interleaved_medians(
        {name: (lambda s=s: s(*step_args)) for name, s in steps.items()},
        repeats=plan.get("repeats", 100),
    )
    for t in timings.values():
        t["ratio_to_ce"] = t["median_s"] / timings["ce"]["median_s"]
    return [
        {
            "batch": batch,
            "dtype": dtype,
            "top_c": top_c,
            "gamma": gamma,
            "timings": timings,
            "skipped_candidates": skipped,
        }
    ]


def markdown(records: list[dict]) -> str:
    """One row per (record, loss): median and min step ms, the ratio to ce."""
    lines = [
        "| batch | dtype | loss | median step ms | min step ms | ratio to ce (median) |",
        "|---|---|---|---|---|---|",
    ]
    for rec in records:
        for name, t in rec["timings"].items():
            lines.append(
                f"| {rec['batch']} | {rec['dtype']} | {name} | "
                f"{t['median_s'] * 1e3:.2f} | {t['min_s'] * 1e3:.2f} | "
                f"{t['ratio_to_ce']:.3f} |"
            )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeats",
        type=int,
        default=100,
        help="samples per loss; steps vary by +-25%% on a shared 2-core VM, so the median needs many",
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--top-c", type=int, default=2)
    parser.add_argument("--gamma", type=float, default=0.05)
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="compute dtype of the convnet (float32 parameters and logits)",
    )
    parser.add_argument("--out", default="benchmarks/results/train_step.json")
    args = parser.parse_args(argv)

    machine = _timing.machine_info()
    print(f"machine: {machine}", file=sys.stderr)
    records = run(
        {
            "batch": args.batch,
            "top_c": args.top_c,
            "gamma": args.gamma,
            "repeats": args.repeats,
            "dtype": args.dtype,
        }
    )
    timings = records[0]["timings"]
    print(markdown(records))
    machine["load_average_end"] = _timing.machine_info()["load_average"]
    _timing.write_json(
        args.out,
        {
            "benchmark": "train_step",
            "measure": "one jitted SGD (momentum 0.9) step, median seconds per step",
            "model": "conv 32-64-128 3x3 + avg-pool, dense 10 (Flax Linen)",
            "input": [args.batch, 32, 32, 3],
            "machine": machine,
            "args": vars(args),
            "timings": timings,
        },
    )
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
