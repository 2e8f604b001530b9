"""Measures a FER2013 configuration's train-step and evaluation times and projects its run time.

  python -m experiments.fer2013.step_time                      # the recipe: VGG 64/4096, TenCrop
  python -m experiments.fer2013.step_time --width 8 --hidden 512 --train_crops 1 --epochs 8

The step is the shared loop's jitted train step (on-device augmentation and crops, the VGG, the
loss, SGD with the plateau scale) and the evaluation its TenCrop evaluator, on synthetic 48x48
faces (the time does not depend on the pixels). Prints JSON: seconds per step and per evaluation
batch (median of the timed calls, after one compiling call), and the projected epoch and run times
on FER2013 (28,709 training faces, 3,589 validation and 3,589 test faces evaluated every epoch).
"""

import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments.common import evaluation, losses, parallel, plateau, steps
from experiments.fer2013 import augment, models, train

F = flags.FLAGS
flags.DEFINE_integer("width", train.RECIPE["width"], "VGG first-stage channels.")
flags.DEFINE_integer("hidden", train.RECIPE["hidden"], "VGG hidden linear width.")
flags.DEFINE_integer("train_crops", train.RECIPE["train_crops"], "1 or 10 crops per face.")
flags.DEFINE_integer("batch_size", train.RECIPE["batch_size"], "Faces per step.")
flags.DEFINE_integer("eval_batch_size", 64, "Faces per evaluation batch.")
flags.DEFINE_integer("epochs", train.RECIPE["epochs"], "Epochs of the projected run.")
flags.DEFINE_float("gsc_gamma", 0.01, "GSC gamma of the timed loss (0: CE).")
flags.DEFINE_integer("steps", 3, "Timed train steps.")
flags.DEFINE_integer("eval_batches", 3, "Timed evaluation batches.")
flags.DEFINE_bool("bf16", False, "bfloat16 compute.")

FER2013_SIZES = {"train": 28_709, "val": 3_589, "test": 3_589}


def _median_time(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure(*, width, hidden, train_crops, batch_size, eval_batch_size, gsc_gamma, bf16,
            num_steps, eval_batches, crop=train.RECIPE["crop"]) -> dict:
    """Seconds per train step and per evaluation batch of one configuration (see module doc)."""
    dtype = jnp.bfloat16 if bf16 else jnp.float32
    model = models.VGG(width=width, hidden=hidden, dtype=dtype)
    recipe = dict(train.RECIPE, batch_size=batch_size)
    tx, lr_fn = train.make_tx_factory(recipe)(1)
    tx = plateau.scale_by_plateau(tx, plateau.PlateauSpec(0.75, 5))
    mesh = parallel.make_mesh()
    rng = np.random.RandomState(0)
    n = batch_size * (num_steps + 1)
    repl = parallel.replicated(mesh)  # placed as the loop places them
    images = parallel.put_replicated(rng.randint(0, 256, (n, 48, 48, 1)).astype(np.uint8), mesh)
    labels = parallel.put_replicated(rng.randint(0, 7, n).astype(np.int32), mesh)
    state = jax.jit(lambda k: steps.init_state(model, tx, jnp.zeros((1, crop, crop, 1), dtype),
                                               k, 7, False), out_shardings=repl)(jax.random.key(0))
    loss = losses.LossSpec("ce", gsc_gamma=gsc_gamma, gsc_top_c=2)
    step = jax.jit(steps.make_train_step(
        model=model, tx=tx, loss_spec=loss, lr_fn=lr_fn, steps_per_epoch=num_steps + 1,
        batch_size=batch_size, mesh=mesh, mean=(0.0,), std=(1.0,), use_augment=False,
        compute_dtype=dtype, aug_key=jax.random.key(1),
        train_views=functools.partial(augment.train_views, crop=crop, num_crops=train_crops),
        dropout_key=jax.random.key(2)), donate_argnums=0)
    perm = parallel.put_replicated(np.arange(n, dtype=np.int32), mesh)
    holder = {"state": state}

    def one_step():
        holder["state"], metrics = step(holder["state"], images, labels, perm)
        return metrics["loss"]

    t0 = time.perf_counter()
    jax.block_until_ready(one_step())
    first = time.perf_counter() - t0
    step_s = _median_time(one_step, num_steps)
    evaluator = evaluation.make_evaluator(
        steps.make_logits_fn(model, mean=(0.0,), std=(1.0,), compute_dtype=dtype,
                             eval_views=functools.partial(augment.eval_views, crop=crop)),
        batch_size=eval_batch_size, num_classes=7, replicated=repl,
        batch_sharded=parallel.batch_sharded(mesh), confusion=True)
    m = eval_batch_size
    x, y, mask = (parallel.put_replicated(a, mesh) for a in (
        np.asarray(images)[:m], np.asarray(labels)[:m], np.ones(m, bool)))
    evaluator(holder["state"], x, y, mask)  # compiles
    eval_s = _median_time(lambda: evaluator(holder["state"], x, y, mask)["top1"], eval_batches)
    return {"compile_and_first_step_s": first, "step_s": step_s, "eval_batch_s": eval_s}


def project(timing: dict, *, batch_size: int, eval_batch_size: int, epochs: int) -> dict:
    """Epoch and run time on FER2013 from the per-step and per-evaluation-batch times."""
    steps_per_epoch = FER2013_SIZES["train"] // batch_size
    eval_batches = sum(-(-FER2013_SIZES[s] // eval_batch_size) for s in ("val", "test"))
    epoch_s = steps_per_epoch * timing["step_s"] + eval_batches * timing["eval_batch_s"]
    return {"steps_per_epoch": steps_per_epoch, "eval_batches_per_epoch": eval_batches,
            "train_s_per_epoch": steps_per_epoch * timing["step_s"],
            "eval_s_per_epoch": eval_batches * timing["eval_batch_s"], "epoch_s": epoch_s,
            "epochs": epochs, "run_h": epochs * epoch_s / 3600.0}


def main(argv):
    del argv
    timing = measure(width=F.width, hidden=F.hidden, train_crops=F.train_crops,
                     batch_size=F.batch_size, eval_batch_size=F.eval_batch_size,
                     gsc_gamma=F.gsc_gamma, bf16=F.bf16, num_steps=F.steps,
                     eval_batches=F.eval_batches)
    out = {"config": {"width": F.width, "hidden": F.hidden, "train_crops": F.train_crops,
                      "batch_size": F.batch_size, "eval_batch_size": F.eval_batch_size,
                      "gsc_gamma": F.gsc_gamma, "bf16": F.bf16,
                      "macs_per_crop": models.multiply_adds(width=F.width, hidden=F.hidden)},
           "device": jax.devices()[0].device_kind, **timing,
           **project(timing, batch_size=F.batch_size, eval_batch_size=F.eval_batch_size,
                     epochs=F.epochs)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    app.run(main)
