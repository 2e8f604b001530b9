"""FER2013: train step (CE and CE + GSC), augmentation and TenCrop evaluation times; run time.

  python -m benchmarks.fer2013_step                      # the recipe: VGG 64/4096, TenCrop
  python -m benchmarks.fer2013_step --width 8 --hidden 512 --train_crops 1 --epochs 8

Everything is built as `experiments.fer2013` builds it with `experiments/fer2013/configs/vgg.py`
(`loop.setup`: the task's in-memory source, the VGG, SGD with the plateau scale, the multiview
evaluator), on synthetic 48x48 faces (`config.data.npz`; the times do not depend on the pixels).
Timed round-robin in one process (`benchmarks._timing.interleaved_medians`):

- ``ce`` and ``ce_gsc``: the loop's jitted train step (the VGG, the loss, the update) on one
  batch of `train_crops` crops per face; ``ce_gsc / ce`` is GSC's share of a step;
- ``batch``: the source's on-device batch (gather, geometry, TenCrop, random erasing);
- ``eval_batch``: the TenCrop evaluator on one batch of `eval_batch_size` faces.

Prints JSON: seconds per step, batch and evaluation batch (medians) and the projected epoch and
run times on FER2013 (28,709 training faces; 3,589 validation and 3,589 test faces evaluated
every epoch).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import jax
import numpy as np

from benchmarks import _timing
from benchmarks import _train_steps

CONFIG = "experiments/fer2013/configs/vgg.py"
FER2013_SIZES = {"train": 28_709, "val": 3_589, "test": 3_589}
EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
DEFAULTS = {
    "width": 64,
    "hidden": 4096,
    "train_crops": 10,
    "crop": 40,
    "batch_size": 64,
    "eval_batch_size": 64,
    "epochs": 300,
    "gsc_gamma": 0.01,
    "gsc_top_c": 2,
    "repeats": 3,
    "bf16": False,
}
TRAIN_BATCHES = 64  # synthetic training faces = this many batches: the epoch order rarely turns


def synthetic_npz(path: str, plan: dict) -> None:
    """Seeded random 48x48 faces in `memory.load_npz`'s format: one evaluation batch per split."""
    rng = np.random.RandomState(0)
    n, m = plan["batch_size"] * TRAIN_BATCHES, plan["eval_batch_size"]
    faces = lambda k: rng.randint(0, 256, (k, 48, 48, 1)).astype(np.uint8)  # noqa: E731
    labels = lambda k: np.arange(k, dtype=np.int32) % len(EMOTIONS)  # noqa: E731
    np.savez(
        path,
        train_images=faces(n),
        train_labels=labels(n),
        val_images=faces(m),
        val_labels=labels(m),
        test_images=faces(m),
        test_labels=labels(m),
        class_names=np.asarray(EMOTIONS),
    )


def config_of(plan: dict, npz: str, gamma: float):
    return _train_steps.load_config(
        _train_steps.repo_path(CONFIG),
        {
            "data.npz": npz,
            "model.width": plan["width"],
            "model.hidden": plan["hidden"],
            "data.train_crops": plan["train_crops"],
            "data.crop": plan["crop"],
            "batch_size": plan["batch_size"],
            "eval_batch_size": plan["eval_batch_size"],
            "epochs": plan["epochs"],
            "bf16": plan["bf16"],
            "loss.name": "ce",
            "loss.gsc.gamma": gamma,
            "loss.gsc.top_c": plan["gsc_top_c"],
            "run.progress": False,
        },
    )


def run(plan: dict) -> list[dict]:
    """Times the steps, the batch and the evaluation of `plan` (keys of DEFAULTS); one record."""
    from experiments.common import loop  # pylint: disable=import-outside-toplevel
    from experiments.fer2013 import models  # pylint: disable=import-outside-toplevel

    plan = {**DEFAULTS, **plan}
    with tempfile.TemporaryDirectory() as tmp:
        npz = os.path.join(tmp, "faces.npz")
        synthetic_npz(npz, plan)
        runs = {
            "ce": loop.setup(config_of(plan, npz, 0.0), tmp),
            "ce_gsc": loop.setup(config_of(plan, npz, plan["gsc_gamma"]), tmp),
        }
        ce = runs["ce"]
        batches = ce.source.train_batches(
            batch_size=plan["batch_size"],
            start_step=0,
            num_steps=10**9,
            mesh=ce.mesh,
            seed=ce.config.seed,
        )
        batch = next(batches)
        evaluator = ce.evaluators["val"]

        def extra(runners):
            return {
                "batch": lambda: next(batches),
                "eval_batch": lambda: evaluator.run(runners["ce"].state)[0]["top1"],
            }

        timings, machine, _ = _train_steps.time_losses(
            runs, batch, repeats=plan["repeats"], extra_calls=extra
        )
    timing = {
        "step_s": timings["ce"]["median_s"],
        "gsc_step_s": timings["ce_gsc"]["median_s"],
        "batch_s": timings["batch"]["median_s"],
        "eval_batch_s": timings["eval_batch"]["median_s"],
    }
    return [
        {
            "model": f"VGG {plan['width']}/{plan['hidden']}, {plan['train_crops']} crop(s) of "
            f"{plan['crop']}px x {plan['batch_size']} faces, "
            f"{'bf16' if plan['bf16'] else 'f32'}",
            "plan": plan,
            "machine": machine,
            "timings": timings,
            "macs_per_crop": models.multiply_adds(
                crop=plan["crop"], width=plan["width"], hidden=plan["hidden"]
            ),
            "ratio_ce_gsc_to_ce": timing["gsc_step_s"] / timing["step_s"],
            **timing,
            **project(
                timing,
                batch_size=plan["batch_size"],
                eval_batch_size=plan["eval_batch_size"],
                epochs=plan["epochs"],
            ),
        }
    ]


def project(timing: dict, *, batch_size: int, eval_batch_size: int, epochs: int) -> dict:
    """Epoch and run time on FER2013 from the per-step (CE step + batch) and per-evaluation-batch
    times."""
    steps_per_epoch = FER2013_SIZES["train"] // batch_size
    eval_batches = sum(-(-FER2013_SIZES[s] // eval_batch_size) for s in ("val", "test"))
    train_s = steps_per_epoch * (timing["step_s"] + timing.get("batch_s", 0.0))
    epoch_s = train_s + eval_batches * timing["eval_batch_s"]
    return {
        "steps_per_epoch": steps_per_epoch,
        "eval_batches_per_epoch": eval_batches,
        "train_s_per_epoch": train_s,
        "eval_s_per_epoch": eval_batches * timing["eval_batch_s"],
        "epoch_s": epoch_s,
        "epochs": epochs,
        "run_h": epochs * epoch_s / 3600.0,
    }


def markdown(records: list[dict]) -> str:
    lines = [
        "| configuration | CE step ms | CE+GSC step ms | step / CE | batch (augment) ms | "
        "eval batch ms | projected epoch s | projected run h |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        lines.append(
            f"| {rec['model']} | {rec['step_s'] * 1e3:.1f} | {rec['gsc_step_s'] * 1e3:.1f} | "
            f"{rec['ratio_ce_gsc_to_ce']:.3f} | {rec['batch_s'] * 1e3:.1f} | "
            f"{rec['eval_batch_s'] * 1e3:.1f} | {rec['epoch_s']:.0f} | {rec['run_h']:.3g} |"
        )
    return "\n".join(lines)


def _flags():
    from absl import flags  # pylint: disable=import-outside-toplevel

    d = DEFAULTS
    flags.DEFINE_integer("width", d["width"], "VGG first-stage channels.")
    flags.DEFINE_integer("hidden", d["hidden"], "VGG hidden linear width.")
    flags.DEFINE_enum("train_crops", str(d["train_crops"]), ["1", "10"], "Crops per face.")
    flags.DEFINE_integer("crop", d["crop"], "TenCrop side.")
    flags.DEFINE_integer("batch_size", d["batch_size"], "Faces per step.")
    flags.DEFINE_integer("eval_batch_size", d["eval_batch_size"], "Faces per evaluation batch.")
    flags.DEFINE_integer("epochs", d["epochs"], "Epochs of the projected run.")
    flags.DEFINE_float("gsc_gamma", d["gsc_gamma"], "GSC gamma of the ce_gsc step (> 0).")
    flags.DEFINE_integer("gsc_top_c", d["gsc_top_c"], "GSC top_c of the ce_gsc step.")
    flags.DEFINE_integer("steps", d["repeats"], "Timed samples of every call (steps, batches).")
    flags.DEFINE_integer(
        "eval_batches",
        d["repeats"],
        "Timed evaluation batches: the round-robin "
        "takes max(--steps, --eval_batches) samples of every call.",
    )
    flags.DEFINE_bool("bf16", d["bf16"], "bfloat16 compute.")
    flags.DEFINE_string("out", "benchmarks/results/fer2013_step.json", "JSON written here.")
    return flags.FLAGS


def main(argv):
    from absl import app  # pylint: disable=import-outside-toplevel

    del argv
    f = FLAGS
    if not f.gsc_gamma > 0:
        raise app.UsageError(f"--gsc_gamma must be > 0 (the ce_gsc step), got {f.gsc_gamma}.")
    plan = {
        "width": f.width,
        "hidden": f.hidden,
        "train_crops": int(f.train_crops),
        "crop": f.crop,
        "batch_size": f.batch_size,
        "eval_batch_size": f.eval_batch_size,
        "epochs": f.epochs,
        "gsc_gamma": f.gsc_gamma,
        "gsc_top_c": f.gsc_top_c,
        "repeats": max(f.steps, f.eval_batches),
        "bf16": f.bf16,
    }
    try:
        records = run(plan)
    except ValueError as error:  # a bad setting, named by the config's validation
        raise app.UsageError(str(error)) from None
    print(markdown(records), file=sys.stderr)
    out = {"benchmark": "fer2013_step", "device": jax.devices()[0].device_kind, **records[0]}
    _timing.write_json(f.out, out)
    print(json.dumps(out, indent=1))
    print(f"wrote {f.out}", file=sys.stderr)


if __name__ == "__main__":
    from absl import app as _app

    FLAGS = _flags()
    _app.run(main)
