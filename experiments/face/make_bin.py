"""Builds a verification .bin from an identity folder: `python -m experiments.face.make_bin ...`.

Example:
  python -m experiments.face.make_bin --image_dir DIR --out val.bin --num_pairs 6000 --seed 0
DIR/<identity>/*.jpg|jpeg|png holds aligned face crops, one folder per identity. Half of the pairs
show one identity twice, half two identities (`verification.sample_pairs`); the image files are
stored byte for byte (no re-encoding) in insightface's .bin format (`verification.write_bin`),
which `verification.load_bin` reads back.
"""

import pathlib
import sys

import numpy as np
from absl import app
from absl import flags

from experiments.face import verification

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

F = flags.FLAGS
flags.DEFINE_string("image_dir", None, "Identity folder DIR/<identity>/<image>.", required=True)
flags.DEFINE_string("out", None, "The .bin to write.", required=True)
flags.DEFINE_integer("num_pairs", 6000, "Pairs (even): half same identity, half different.")
flags.DEFINE_integer("seed", 0, "Seed of the pair draw.")


def list_identity_folder(image_dir) -> tuple[list[pathlib.Path], np.ndarray]:
    """The image files of DIR/<identity>/* (sorted by identity, then name) and their int labels.

    Raises:
      ValueError: DIR is not a folder or holds no images.
    """
    root = pathlib.Path(image_dir)
    if not root.is_dir():
        raise ValueError(f"--image_dir {root} is not a folder.")
    files, labels = [], []
    identities = sorted(p for p in root.iterdir() if p.is_dir())
    for label, identity in enumerate(identities):
        images = sorted(
            p for p in identity.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        files += images
        labels += [label] * len(images)
    if not files:
        raise ValueError(
            f"--image_dir {root} holds no images <identity>/*{'|'.join(IMAGE_SUFFIXES)}."
        )
    return files, np.asarray(labels, np.int64)


def make_bin(image_dir, out, *, num_pairs: int, seed: int) -> dict:
    """Draws `num_pairs` balanced pairs from `image_dir` and writes them to `out`; returns counts."""
    files, labels = list_identity_folder(image_dir)
    index, issame = verification.sample_pairs(labels, num_pairs, seed=seed)
    encoded = [files[i].read_bytes() for i in index.reshape(-1)]
    verification.write_bin(out, encoded, issame)
    return {
        "identities": int(len(np.unique(labels))),
        "images": len(files),
        "pairs": int(len(issame)),
        "same_pairs": int(issame.sum()),
    }


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}.")
    try:
        counts = make_bin(F.image_dir, F.out, num_pairs=F.num_pairs, seed=F.seed)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {F.out}: {counts}")


if __name__ == "__main__":
    app.run(main)
