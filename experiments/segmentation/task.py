"""Kanezaki's unsupervised segmentation (ICASSP 2018) on the shared loop, with an optional GSC term
(GSC paper Sec. 4.4, Fig. 8).

One image is the whole dataset: every step trains on it (`ImageSource`), against self-labels the
task derives from the logits (`targets`: the per-pixel argmax, then each SLIC superpixel's most
frequent label, `model.refine_labels`), and training stops after the step of the first iteration
whose argmax map has at most `config.data.min_labels` labels (`finished`), or after
`config.data.iterations` steps. The evaluator (`Segmentation`) reads the final label map and, with
a ground truth, scores it (Hungarian mean IoU, segmentation covering).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import config as cfg
from experiments.common import parallel
from experiments.common.data.source import Source
from experiments.segmentation import data
from experiments.segmentation import evaluate
from experiments.segmentation import model
from experiments.segmentation import plots

SYNTHETIC_SHAPE = (321, 481)  # the reference's (BSDS500) image size


def load(config) -> tuple:
    """(pixels [h, w, 3] uint8 at the working size in the net's channel order, the image at the
    working size in RGB, ground truth [H, W] or None, downscale factor) of `config.data`."""
    d = config.data
    if d.image == "synthetic":
        image, truth = data.synthetic_scene(*SYNTHETIC_SHAPE, seed=config.seed)
    elif os.path.splitext(d.image)[1]:
        image = data.load_image(d.image)
        truth = data.load_ground_truth(d.ground_truth) if d.ground_truth else None
        if truth is not None and truth.shape != image.shape[:2]:
            raise ValueError(
                f"config.data.ground_truth {d.ground_truth!r} is {truth.shape}, "
                f"the image {d.image!r} is {image.shape[:2]}."
            )
    else:
        image, truth = data.skimage_image(d.image), None
    small = data.downscale(image, d.max_side)
    pixels = small[..., ::-1] if d.bgr else small
    return pixels, small, truth, small.shape[0] / image.shape[0]


class ImageSource(Source):
    """One image: every train batch is the image with its superpixels; the 'image' split
    evaluates it. Batches: {'image': uint8 [1, h, w, 3], 'label': int32 [h * w] superpixel ids}
    (train) and {'image', 'label': ground-truth-free zeros, 'mask': [True]} (eval)."""

    splits = ("image",)

    def __init__(self, config):
        d = config.data
        self.pixels, self.rgb, self.truth, scale = load(config)
        self.segment_ids, self.num_segments = model.superpixels(
            self.pixels, d.slic_n_segments, d.slic_compactness, scale
        )
        self.class_names = tuple(str(k) for k in range(config.model.n_channel))
        self.input_shape = tuple(self.pixels.shape)
        self.iterations = d.iterations
        self.image = d.image

    def steps_per_epoch(self, batch_size: int) -> int:
        if batch_size != 1:
            raise ValueError(f"config.batch_size must be 1 (one image), got {batch_size}.")
        return self.iterations

    def _batch(self, mesh):
        put = lambda a: parallel.put_replicated(a, mesh)  # noqa: E731
        return {"image": put(self.pixels[None]), "label": put(self.segment_ids)}

    def train_batches(self, *, batch_size, start_step, num_steps, mesh, seed):
        del seed
        batch = self._batch(mesh)
        for _ in range(start_step, num_steps):
            yield batch

    def eval_batches(self, split, *, batch_size, mesh):
        yield {**self._batch(mesh), "mask": parallel.put_replicated(np.ones(1, bool), mesh)}

    def identity(self) -> dict:
        return {
            "image": self.image,
            "shape": list(self.pixels.shape),
            "num_superpixels": self.num_segments,
        }

    def info(self) -> dict:
        return {
            "image": self.image,
            "working_shape": list(self.rgb.shape),
            "num_superpixels": self.num_segments,
        }


def validate(config) -> None:
    for path in ("model.n_channel", "model.n_conv", "data.iterations", "data.slic_n_segments"):
        cfg.check(config, path, cfg.positive_int, "a positive integer")
    cfg.check(config, "data.min_labels", lambda n: isinstance(n, int) and n >= 1, "an integer >= 1")
    cfg.check(
        config,
        "data.max_side",
        cfg.non_negative_int,
        "an integer >= 0 (0 = full resolution)",
    )
    if config.data.ground_truth and not os.path.splitext(config.data.image)[1]:
        raise ValueError("config.data.ground_truth needs config.data.image to be an image file.")


def make_source(config) -> ImageSource:
    return ImageSource(config)


def make_model(config, num_classes: int, mesh):
    del mesh
    return model.KanezakiNet(num_classes, config.model.n_conv)


def targets(logits, batch):
    """The self-labels: each superpixel's most frequent argmax label (`model.refine_labels`;
    the pixel count bounds the superpixel ids, so the histogram's size is static)."""
    labels = jnp.argmax(logits, axis=-1)
    return model.refine_labels(labels, batch["label"], logits.shape[0], logits.shape[-1])


def init_task_state(config) -> dict:
    """{'n_labels': int32 [iterations] labels per iteration (before refinement), 'last': the
    latest count, 'min_labels'}."""
    return {
        "n_labels": jnp.zeros((config.data.iterations,), jnp.int32),
        "last": jnp.int32(config.model.n_channel + 1),
        "min_labels": jnp.int32(config.data.min_labels),
    }


def update_task_state(state, logits, batch, step):
    del batch
    count = model.count_labels(jnp.argmax(logits, axis=-1), logits.shape[-1])
    return {**state, "n_labels": state["n_labels"].at[step].set(count), "last": count}


def finished(state):
    """Kanezaki's stopping rule: this iteration's argmax map has at most min_labels labels."""
    return state["last"] <= state["min_labels"]


class Segmentation:
    """The final label map of the image: final_labels, iterations and, with a ground truth,
    mean_iou and covering (scored at the ground truth's resolution); details: the label map and
    the labels per iteration. `write` draws <name>_labels.png."""

    def __init__(self, name, options, context):
        del options
        self.name, self.context = name, context
        self._logits = jax.jit(context.logits)

    def run(self, state) -> tuple:
        source = self.context.source
        batch = next(source.eval_batches("image", batch_size=1, mesh=self.context.mesh))
        logits = self._logits(state, batch["image"])
        labels = np.asarray(jnp.argmax(logits, axis=-1)).reshape(source.pixels.shape[:2])
        done = int(jax.device_get(state.finished_at_step)) or int(jax.device_get(state.step))
        history = np.asarray(jax.device_get(state.task_state["n_labels"]))[:done]
        scalars = {"final_labels": int(len(np.unique(labels))), "iterations": done}
        if source.truth is not None:
            upscaled = data.upscale_labels(labels, source.truth.shape)
            scalars["mean_iou"] = evaluate.hungarian_mean_iou(upscaled, source.truth)
            scalars["covering"] = evaluate.segmentation_covering(upscaled, source.truth)
        return scalars, {"labels": labels.tolist(), "n_labels_per_iteration": history.tolist()}

    def write(self, scalars, details, workdir: str, title: str) -> None:
        del scalars
        plots.save_comparison(
            os.path.join(workdir, f"{self.name}_labels.png"),
            self.context.source.rgb,
            [(title, np.asarray(details["labels"]))],
        )
