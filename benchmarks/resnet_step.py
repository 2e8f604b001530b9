r"""ResNet train step with and without GSC, and the streaming input pipeline's throughput.

1. The train step of the shared loop (`experiments.common.loop`) as `experiments.imagenet` runs
   it with `experiments/imagenet/configs/pycls.py`: ResNet-50 v1.5 at 224x224, 1000 classes, SGD
   with Nesterov momentum and weight decay, the pycls recipe, on a synthetic uint8 batch, timed
   round-robin (`benchmarks._timing.interleaved_medians`) for ``ce`` and ``ce_gsc``
   (`gsc_jax.gsc_loss`, gamma 0.02, top_c 7 as in the paper's ResNet-50 row); the ratio
   ce_gsc / ce is the GSC overhead of a whole step (target <= 1.02).
2. With ``--data_dir`` (an image folder, DIR/train/<class>/*, DIR/val/<class>/*): the input
   pipeline alone (the task's stream source: decode + Inception crop + flip + lighting into
   device batches, images/s), and the train step fed by it, beside the synthetic step's images/s.

On a CPU these are sanity figures (use a small ``--batch``); on a GPU or TPU host run it with the
real batch size.

    python -m benchmarks.resnet_step [--batch 8] [--repeats 5] [--data_dir DIR] [--bf16]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import jax

from benchmarks import _timing
from benchmarks import _train_steps
from experiments.common import config as cfg
from experiments.imagenet import models

CONFIG = "experiments/imagenet/configs/pycls.py"
DEFAULTS = {
    "model": "resnet50",
    "width": 64,
    "image_size": 224,
    "batch": 8,
    "classes": 1000,
    "repeats": 5,
    "gamma": 0.02,
    "top_c": 7,
    "bf16": False,
    "data_dir": None,
    "data_steps": 6,
}


def config_of(plan: dict, gamma: float):
    """The pycls config of `plan` with GSC strength `gamma` (0: CE)."""
    return _train_steps.load_config(
        _train_steps.repo_path(CONFIG),
        {
            "model.name": plan["model"],
            "model.width": plan["width"],
            "data.image_size": plan["image_size"],
            "batch_size": plan["batch"],
            "bf16": plan["bf16"],
            "loss.name": "ce",
            "loss.gsc.gamma": gamma,
            "loss.gsc.top_c": plan["top_c"],
            "run.progress": False,
            **({"data.data_dir": plan["data_dir"]} if plan.get("data_dir") else {}),
        },
    )


def run(plan: dict) -> list[dict]:
    """Times the ce and ce_gsc steps of `plan` (keys of DEFAULTS); returns one record."""
    plan = {**DEFAULTS, **plan}
    ce_config = config_of(plan, 0.0)
    source = None
    if plan["data_dir"]:
        source = cfg.load_task(ce_config).make_source(ce_config)
    size = plan["image_size"]
    classes = source.num_classes if source is not None else plan["classes"]
    synthetic = _train_steps.SyntheticSource(classes, (size, size, 3))
    runs = {
        "ce": _train_steps.make_run(ce_config, synthetic),
        "ce_gsc": _train_steps.make_run(config_of(plan, plan["gamma"]), synthetic),
    }
    batch = synthetic.batch(plan["batch"], runs["ce"].mesh)
    timings, machine, runners = _train_steps.time_losses(runs, batch, repeats=plan["repeats"])
    record = {
        "model": f"{plan['model']} v1.5 width {plan['width']}, {classes} classes, "
        f"{'bf16' if plan['bf16'] else 'f32'}",
        "input": [plan["batch"], size, size, 3],
        "plan": plan,
        "machine": machine,
        "timings": timings,
        "ratio_ce_gsc_to_ce": timings["ce_gsc"]["median_s"] / timings["ce"]["median_s"],
        "real_data": None,
    }
    if source is not None:
        record["real_data"] = real_data(source, runners["ce"], plan, timings["ce"])
    return [record]


def real_data(source, runner, plan: dict, synthetic_timing: dict) -> dict:
    """images/s of the task's stream source alone and of the ce step fed by it."""
    batch, steps = plan["batch"], plan["data_steps"]
    mesh = runner.run.mesh
    batches = source.train_batches(
        batch_size=batch, start_step=0, num_steps=10**9, mesh=mesh, seed=0
    )
    jax.block_until_ready(next(batches))  # builds the tf.data graph and fills its buffers
    start = time.perf_counter()
    for b in itertools.islice(batches, steps):
        jax.block_until_ready(b)
    pipeline_rate = steps * batch / (time.perf_counter() - start)
    jax.block_until_ready(runner.step(next(batches)))
    start = time.perf_counter()
    for b in itertools.islice(batches, steps):
        loss = runner.step(b)
    jax.block_until_ready(loss)
    fed_rate = steps * batch / (time.perf_counter() - start)
    return {
        "pipeline_images_per_s": pipeline_rate,
        "real_data_step_images_per_s": fed_rate,
        "synthetic_step_images_per_s": synthetic_timing["images_per_s"],
        "data_steps": steps,
    }


def markdown(records: list[dict]) -> str:
    """One row per (record, loss): median step ms, images/s, compile s; the GSC / CE ratio."""
    lines = [
        "| model | batch | loss | median step ms | images/s | compile + first step s | step / CE |",
        "|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        ce = rec["timings"]["ce"]["median_s"]
        for name in ("ce", "ce_gsc"):
            t = rec["timings"][name]
            lines.append(
                f"| {rec['model']}, {rec['input'][1]}px | {rec['input'][0]} | "
                f"{t['label']} | {t['median_s'] * 1e3:.1f} | {t['images_per_s']:.1f} "
                f"| {t['compile_s']:.1f} | {t['median_s'] / ce:.3f} |"
            )
        data = rec.get("real_data")
        if data:
            lines.append(
                f"| input pipeline alone | {rec['input'][0]} | | | "
                f"{data['pipeline_images_per_s']:.1f} | | |"
            )
            lines.append(
                f"| CE on real data (pipeline + step) | {rec['input'][0]} | | | "
                f"{data['real_data_step_images_per_s']:.1f} | | |"
            )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULTS["model"], choices=models.MODELS)
    parser.add_argument(
        "--width", type=int, default=DEFAULTS["width"], help="base width (64: the real ResNet)"
    )
    parser.add_argument("--image_size", type=int, default=DEFAULTS["image_size"])
    parser.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="global batch")
    parser.add_argument("--classes", type=int, default=DEFAULTS["classes"])
    parser.add_argument(
        "--repeats", type=int, default=DEFAULTS["repeats"], help="timed samples per loss"
    )
    parser.add_argument("--gamma", type=float, default=DEFAULTS["gamma"])
    parser.add_argument("--top_c", type=int, default=DEFAULTS["top_c"])
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--data_dir", default=None, help="image folder for the real-data figures")
    parser.add_argument(
        "--data_steps", type=int, default=DEFAULTS["data_steps"], help="timed real-data steps"
    )
    parser.add_argument("--out", default="benchmarks/results/resnet_step.json")
    args = parser.parse_args(argv)
    plan = {k: v for k, v in vars(args).items() if k != "out"}
    try:
        records = run(plan)
    except ValueError as error:  # a bad setting, named by the config's validation
        parser.error(str(error))
    print(markdown(records))
    rec = records[0]
    print(f"ce_gsc / ce step-time ratio: {rec['ratio_ce_gsc_to_ce']:.3f} (target <= 1.02)")
    _timing.write_json(
        args.out,
        {
            "benchmark": "resnet_step",
            "measure": "one jitted train step of the shared loop (pycls recipe), median seconds; "
            "images/s",
            **rec,
            "args": vars(args),
        },
    )
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
