"""Kanezaki's unsupervised segmentation with and without the GSC term (paper Sec. 4.4, Fig. 8).

    python -m experiments.segmentation --image photo.jpg [--ground_truth regions.png]
    python -m experiments.segmentation                    # scikit-image samples, nothing downloaded
    python -m experiments.segmentation --builtin_images=synthetic   # scored against known regions

Writes WORKDIR/<image>/{comparison.png, labels_per_iteration.png, results.json}.

Runtime on the 2-core CPU (XLA:CPU, measured while other jobs shared it, load average 6-8): one
iteration at the reference's image size (chelsea, 300 x 451) takes about 5 s, so the 2 x 1000
iterations of a comparison would take hours. Images are therefore downscaled to --max_side. Per
image (both runs, 1000 iterations each, compilation included): the default 48 took 1.6 min,
--max_side=64 took 2.5-2.8 min and --max_side=128 took 17 min. Every run so far hit max_iter: the
number of labels stops falling well above min_labels = 3.
"""

import dataclasses
import os

from absl import app
from absl import flags
from absl import logging

from experiments.segmentation import compare
from experiments.segmentation import data
from experiments.segmentation import train

_DEFAULTS = train.Config()

flags.DEFINE_string("image", None, "Image file; without it, --builtin_images are used.")
flags.DEFINE_string("ground_truth", None, "Region image (.png ids/colours or .npy) for --image.")
flags.DEFINE_list("builtin_images", ["chelsea", "coffee"],
                  "skimage.data names, or 'synthetic' (generated scene with known regions).")
flags.DEFINE_string("workdir", "runs/segmentation", "Output directory.")
flags.DEFINE_float("gsc_gamma", 0.3, "GSC weight (paper: 0.1 to 0.5).")
flags.DEFINE_integer("gsc_top_c", 7, "GSC top_c (paper: 7 or 9).")
flags.DEFINE_integer("max_side", 48,
                     "Downscale so the longer side is at most this (0: keep); 48 keeps an image "
                     "under 2 min on 2 CPU cores, see the module docstring.")
flags.DEFINE_integer("max_iter", _DEFAULTS.max_iter, "Maximum iterations per run.")
flags.DEFINE_integer("min_labels", _DEFAULTS.min_labels, "Stop once at most this many labels.")
flags.DEFINE_integer("n_channel", _DEFAULTS.n_channel, "Channels p (= possible labels).")
flags.DEFINE_integer("n_conv", _DEFAULTS.n_conv, "Number of 3x3 conv blocks M.")
flags.DEFINE_float("lr", _DEFAULTS.lr, "SGD learning rate.")
flags.DEFINE_float("momentum", _DEFAULTS.momentum, "SGD momentum.")
flags.DEFINE_integer("slic_n_segments", _DEFAULTS.slic_n_segments,
                     "SLIC superpixels at the original resolution (scaled with --max_side).")
flags.DEFINE_float("slic_compactness", _DEFAULTS.slic_compactness, "SLIC compactness.")
flags.DEFINE_bool("bgr", _DEFAULTS.bgr, "Feed BGR to the net and SLIC, as the reference does.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of the initial weights (shared by both runs).")
FLAGS = flags.FLAGS

_SYNTHETIC_SHAPE = (321, 481)  # the reference's (BSDS500) image size


def _sources():
    """Yields ``(name, image [H, W, 3] uint8, ground truth [H, W] or None)`` to segment."""
    if FLAGS.image:
        truth = data.load_ground_truth(FLAGS.ground_truth) if FLAGS.ground_truth else None
        image = data.load_image(FLAGS.image)
        if truth is not None and truth.shape != image.shape[:2]:
            raise ValueError(f"Ground truth {FLAGS.ground_truth!r} is {truth.shape}, image "
                             f"{FLAGS.image!r} is {image.shape[:2]}.")
        yield os.path.splitext(os.path.basename(FLAGS.image))[0], image, truth
        return
    if FLAGS.ground_truth:
        raise app.UsageError("--ground_truth needs --image.")
    for name in FLAGS.builtin_images:
        if name == "synthetic":
            yield (name, *data.synthetic_scene(*_SYNTHETIC_SHAPE, seed=FLAGS.seed))
        else:
            yield name, data.skimage_image(name), None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = train.Config(**{f.name: FLAGS[f.name].value for f in dataclasses.fields(train.Config)})
    try:
        sources = list(_sources())
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    for name, image, truth in sources:
        record = compare.compare(name, image, truth, config, gamma=FLAGS.gsc_gamma,
                                 top_c=FLAGS.gsc_top_c, max_side=FLAGS.max_side,
                                 workdir=FLAGS.workdir)
        for run, summary in record["runs"].items():
            scores = {k: round(summary[k], 3) for k in ("mean_iou", "covering") if k in summary}
            logging.info("%s | %s | %d iterations | %d labels | %.1f s | %s", name, run,
                         summary["iterations"], summary["final_labels"], summary["seconds"], scores)


if __name__ == "__main__":
    app.run(main)
