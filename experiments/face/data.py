"""Face data: an aligned-face identity folder for training, verification sets for evaluation.

Training data is an identity folder, DIR/<identity>/*.jpg (112x112 aligned faces), the layout
CASIA-WebFace and MS1MV2 are commonly unpacked to (insightface distributes them as MXNet RecordIO,
``train.rec``; unpack it to JPEG files first). Identities are the sub-folders in sorted order
(`folders.class_folders`: names taken literally, hidden entries skipped). A small held-out split,
every `holdout_every`-th image of each identity with at least two images, measures closed-set
identification (accuracy, ECE of the cosine classifier) during training; verification, the number
the paper reports, uses separate pair sets (`verification`).

Verification sets: insightface's ``.bin`` files (lfw.bin, cfp_fp.bin, agedb_30.bin, calfw.bin,
cplfw.bin, cfp_ff.bin, shipped beside CASIA's and MS1MV2's ``train.rec``), or a folder holding
LFW's ``pairs.txt`` with the images in LFW's layout (DIR/<name>/<name>_0001.jpg).
"""

import os

import numpy as np

from experiments.common.data import folders
from experiments.common.data import stream
from experiments.face import verification

# The six sets of GSC paper Table 5, as insightface names their .bin files.
TABLE5_SETS = ("lfw", "calfw", "cfp_ff", "cplfw", "cfp_fp", "agedb_30")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def identity_catalogue(data_dir: str, *, holdout_every: int = 50) -> stream.Catalogue:
    """The identity folder DATA_DIR/<identity>/* as a streaming catalogue ('train' / 'test').

    Image j (in file-name order) of an identity with at least two images is held out when
    j % holdout_every == holdout_every - 1; the rest trains. Raises MissingDataError naming what
    is missing, ValueError for a bad holdout_every.
    """
    if holdout_every < 2:
        raise ValueError(f"config.data.holdout_every must be at least 2, got {holdout_every}.")
    if not data_dir or not os.path.isdir(data_dir):
        raise stream.MissingDataError(
            f"config.data.data_dir {data_dir!r} is not a directory; expected an identity folder "
            "DIR/<identity>/*.jpg of aligned faces."
        )
    names = folders.class_folders(data_dir)
    train_paths, train_labels, held_paths, held_labels = [], [], [], []
    for k, name in enumerate(names):
        files = folders.image_files(os.path.join(data_dir, name), IMAGE_SUFFIXES)
        for j, path in enumerate(files):
            held = len(files) > 1 and j % holdout_every == holdout_every - 1
            (held_paths if held else train_paths).append(path)
            (held_labels if held else train_labels).append(k)
    empty = [n for n in names if not folders.image_files(os.path.join(data_dir, n), IMAGE_SUFFIXES)]
    if empty:
        raise stream.MissingDataError(
            f"identity folders without images ({', '.join(IMAGE_SUFFIXES)}) in {data_dir!r}: "
            f"{empty[:5]}; add images or remove those folders."
        )
    if len(names) < 2 or not train_paths:
        raise stream.MissingDataError(
            f"config.data.data_dir {data_dir!r} needs at least two identity folders with images "
            f"({', '.join(IMAGE_SUFFIXES)}); found {len(names)} folders and "
            f"{len(train_paths) + len(held_paths)} images."
        )
    if not held_paths:
        raise stream.MissingDataError(
            f"config.data.data_dir {data_dir!r}: no identity has {holdout_every} images, so "
            "nothing is held out for the identification metrics; lower "
            "config.data.holdout_every."
        )
    split = lambda paths, labels: stream.FolderSplit(  # noqa: E731
        tuple(paths), np.asarray(labels, np.int32)
    )
    return stream.Catalogue(
        "folder",
        "identities",
        names,
        len(train_paths),
        len(held_paths),
        split(train_paths, train_labels),
        split(held_paths, held_labels),
        data_dir,
    )


def find_verification_sets(
    paths=(), val_dir: str | None = None, names=TABLE5_SETS
) -> dict[str, str]:
    """{set name: path} from explicit paths (a .bin file, or a folder with pairs.txt) and from
    `val_dir`'s ``<name>.bin`` for each of `names` that exists there.

    A set's name is its file stem (or folder name). Raises MissingDataError for an explicit path
    that does not exist or is neither, and for two sets with the same name.
    """
    found = {}

    def add(name, path):
        if name in found:
            raise stream.MissingDataError(
                f"two verification sets are named {name!r}: {found[name]!r} and {path!r}; "
                "rename one of them (a set is named after its file or folder)."
            )
        found[name] = path

    for path in paths:
        if path.endswith(".bin") and os.path.isfile(path):
            add(os.path.splitext(os.path.basename(path))[0], path)
        elif os.path.isfile(os.path.join(path, "pairs.txt")):
            add(os.path.basename(os.path.normpath(path)), path)
        else:
            raise stream.MissingDataError(
                f"verification set {path!r} is neither a .bin file nor a folder holding pairs.txt."
            )
    if val_dir:
        if not os.path.isdir(val_dir):
            raise stream.MissingDataError(f"config.evals.*.val_dir {val_dir!r} is not a directory.")
        for name in names:
            path = os.path.join(val_dir, f"{name}.bin")
            if os.path.isfile(path) and name not in found:
                found[name] = path
    return found


def load_verification_set(name: str, path: str, image_size: int) -> verification.VerificationSet:
    """One verification set at `image_size` from a .bin file or a pairs.txt folder."""
    if path.endswith(".bin"):
        return verification.load_bin(path, image_size=image_size, name=name)
    return verification.load_pairs(
        os.path.join(path, "pairs.txt"), path, image_size=image_size, name=name
    )
