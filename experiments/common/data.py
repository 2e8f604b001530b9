"""Datasets as in-memory uint8 arrays: image folders (decoded once, cached), TFDS, sklearn digits.

Every loader returns a `Dataset` of host numpy arrays; `parallel.put_replicated` moves it to the
devices once, and the train step gathers its batches there, so no input pipeline runs on the host
during training.
"""

import glob
import hashlib
import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
CIFAR10_DOWNLOAD_HOST = "www.cs.toronto.edu"


class Dataset(NamedTuple):
    """A classification dataset held in memory.

    Attributes:
      train_images: uint8 [N, H, W, C].
      train_labels: int32 [N], possibly with injected label noise.
      test_images: uint8 [M, H, W, C].
      test_labels: int32 [M] (always clean).
      class_names: tuple of K names; label k is `class_names[k]`.
      source: where the data came from (an image folder's absolute path, 'tfds:<name>',
        'sklearn:digits'); part of a run's configuration, which a resume must match.
      val_images: uint8 [V, H, W, C] of a validation split, or None (no validation split).
      val_labels: int32 [V] (clean), or None.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple
    source: str = ""
    val_images: np.ndarray | None = None
    val_labels: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_validation(self) -> bool:
        return self.val_labels is not None


class DataError(ValueError):
    """Raised when the requested data cannot be found or read; the message says what to do."""


IMAGE_FOLDER_LAYOUT = ("the image-folder layout DIR/train/<class>/<image> and "
                       "DIR/test/<class>/<image>")


def _list_split(split_dir: str) -> dict:
    """Returns {class_name: sorted image paths} for DIR/<class>/* of one split."""
    classes = sorted(
        d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d))
    )
    files = {}
    for name in classes:
        cdir = os.path.join(split_dir, name)
        files[name] = sorted(
            os.path.join(cdir, f) for f in os.listdir(cdir) if f.lower().endswith(IMAGE_SUFFIXES)
        )
    return files


def check_image_folder(data_dir: str) -> tuple:
    """Validates the image-folder layout DIR/{train,test}/<class>/<image> and returns class names.

    Raises:
      DataError: with a message saying what is missing and the expected layout.
    """
    layout = f"expected {IMAGE_FOLDER_LAYOUT}"
    if not os.path.isdir(data_dir):
        raise DataError(
            f"--data_dir {data_dir!r} does not exist. Extract the data first, e.g. "
            f"`mkdir -p {data_dir} && tar xzf cifar10-jpeg.tar.gz -C {data_dir}` ({layout})."
        )
    names = None
    for split in ("train", "test"):
        split_dir = os.path.join(data_dir, split)
        if not os.path.isdir(split_dir):
            raise DataError(f"--data_dir {data_dir!r} has no '{split}' folder; {layout}.")
        files = _list_split(split_dir)
        if not files:
            raise DataError(f"{split_dir!r} has no class sub-folders; {layout}.")
        empty = [c for c, f in files.items() if not f]
        if empty:
            raise DataError(f"class folders without images in {split_dir!r}: {empty}; {layout}.")
        if names is not None and tuple(files) != names:
            raise DataError(
                f"train and test class folders differ in {data_dir!r}: {names} vs {tuple(files)}."
            )
        names = tuple(files)
    return names


def _decode(path: str) -> np.ndarray:
    """Decodes one image file to uint8 [H, W, 3] RGB; a file PIL cannot read raises DataError."""
    from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError as error:
        raise DataError(f"cannot decode {path!r} (not an image format PIL can read); replace or "
                        "delete that file.") from error
    except (OSError, SyntaxError, ValueError) as error:
        what = " ".join(str(error).split()) or type(error).__name__
        raise DataError(f"cannot decode {path!r} ({what}); replace or delete that file.") from error


def _decode_split(split_dir: str, class_names: tuple) -> tuple:
    """Decodes all images of one split; returns (uint8 [N, H, W, 3], int32 [N])."""
    files = _list_split(split_dir)
    paths = [p for name in class_names for p in files[name]]
    labels = np.array(
        [k for k, name in enumerate(class_names) for _ in files[name]], dtype=np.int32
    )
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        images = list(pool.map(_decode, paths))
    first = {}
    for path, image in zip(paths, images):
        first.setdefault(image.shape[:2], path)
    if len(first) != 1:
        examples = ", ".join(f"{h}x{w} ({os.path.relpath(p, split_dir)})"
                             for (h, w), p in list(first.items())[:4])
        raise DataError(f"the images in {split_dir!r} have different sizes: {examples}; resize "
                        "them to one size first.")
    return np.stack(images), labels


def cache_dir_for(data_dir: str, fallback_dir: str) -> str:
    """Returns DATA_DIR/.npy_cache when DATA_DIR is writable, else `fallback_dir`."""
    return os.path.join(data_dir, ".npy_cache") if os.access(data_dir, os.W_OK) else fallback_dir


def image_folder_key(data_dir: str, class_names: tuple) -> str:
    """A digest of every image file's path (relative to DATA_DIR), size and modification time.

    Any added, removed, renamed, moved or rewritten image changes it.
    """
    digest = hashlib.sha256(json.dumps(list(class_names)).encode())
    for split in ("train", "test"):
        split_dir = os.path.join(data_dir, split)
        for name, paths in sorted(_list_split(split_dir).items()):
            for path in paths:
                st = os.stat(path)
                rel = os.path.relpath(path, data_dir)
                digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def load_image_folder(data_dir: str, cache_dir: str | None = None,
                      write_cache: bool = True) -> Dataset:
    """Loads DIR/{train,test}/<class>/* once, caching the decoded arrays.

    The cache, CACHE_DIR/images-<key>.npz, is keyed by `image_folder_key`: the listing of every
    image's relative path, size and modification time, so it is rebuilt whenever an image is
    added, removed, moved between classes or rewritten. It is written to a temporary file and
    renamed into place, so a crash or a concurrent reader never sees a partial cache; caches of
    older listings are then deleted.

    Args:
      data_dir: root of the image-folder layout.
      cache_dir: where to keep the cache; default DIR/.npy_cache (if writable).
      write_cache: False decodes without writing the cache (the processes other than 0 of a
        multi-host run, so that only one process writes).

    Returns:
      A `Dataset` with labels given by the alphabetical order of the class folders. Each split is
      put in one fixed random order (numpy seeds 0 for train, 1 for test), so that "the first N
      training (test) images" is a class-mixed subset rather than the first classes.

    Raises:
      DataError: a bad layout, an image that cannot be decoded, or images of different sizes;
        the message names the file or folder.
    """
    class_names = check_image_folder(data_dir)
    cache_dir = cache_dir or cache_dir_for(data_dir, os.path.join(os.getcwd(), ".npy_cache"))
    source = os.path.abspath(data_dir)
    cache_path = os.path.join(cache_dir, f"images-{image_folder_key(data_dir, class_names)}.npz")
    if os.path.exists(cache_path):
        with np.load(cache_path) as cached:
            return Dataset(*(cached[a] for a in _ARRAYS), class_names, source)
    train = _decode_split(os.path.join(data_dir, "train"), class_names)
    order = np.random.RandomState(0).permutation(len(train[1]))
    train = (train[0][order], train[1][order])
    test = _decode_split(os.path.join(data_dir, "test"), class_names)
    order = np.random.RandomState(1).permutation(len(test[1]))
    test = (test[0][order], test[1][order])
    if write_cache:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{cache_path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            np.savez(f, **dict(zip(_ARRAYS, (*train, *test))))
        os.replace(tmp, cache_path)
        for stale in glob.glob(os.path.join(cache_dir, "images-*.npz")):
            if stale != cache_path:
                os.remove(stale)
    return Dataset(*train, *test, class_names, source)


def network_available(host: str = CIFAR10_DOWNLOAD_HOST, timeout: float = 3.0) -> bool:
    """True when a TCP connection to `host`:443 opens within `timeout` seconds."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_tfds_available(name: str, tfds_data_dir: str | None) -> None:
    """Raises `DataError` when TFDS `name` is not prepared locally and cannot be downloaded."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    if tfds.builder(name, data_dir=tfds_data_dir).is_prepared():
        return
    if not network_available():
        raise DataError(
            f"TFDS '{name}' is not prepared locally and the network is unreachable. "
            "Prepare it on a machine with network access and pass that directory as "
            f"--tfds_data_dir, or pass --data_dir DIR with {IMAGE_FOLDER_LAYOUT}."
        )


def load_tfds(name: str = "cifar10", tfds_data_dir: str | None = None,
              chunk_size: int = 10_000) -> Dataset:
    """Loads TFDS `name` (train/test splits, 'image'/'label' features) as whole numpy arrays.

    Each split is read in batches of `chunk_size` examples (in file order, unshuffled) and
    concatenated. This gives the same arrays as `as_dataset(batch_size=-1)`, which pads one batch
    to `info.splits.total_num_examples` and so aborts the process (std::length_error) when the split
    sizes are unknown, as under `tfds.testing.mock_data` without metadata files.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    builder = tfds.builder(name, data_dir=tfds_data_dir)
    builder.download_and_prepare()
    features = builder.info.features

    def split_arrays(split):
        ds = builder.as_dataset(split=split, batch_size=chunk_size, as_supervised=True,
                                shuffle_files=False)
        chunks = list(tfds.as_numpy(ds))
        if not chunks:
            raise DataError(f"TFDS '{name}' split '{split}' is empty.")
        return (np.concatenate([c[0] for c in chunks]).astype(np.uint8),
                np.concatenate([c[1] for c in chunks]).astype(np.int32))

    (xtr, ytr), (xte, yte) = (split_arrays(s) for s in ("train", "test"))
    return Dataset(xtr, ytr, xte, yte, tuple(features["label"].names), f"tfds:{name}")


def load_digits(test_fraction: float = 0.3, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images), stratified train/test split.

    Pixel values 0..16 are rescaled to uint8 0..255; images are [N, 8, 8, 1].
    """
    from sklearn.datasets import load_digits as sk_digits  # pylint: disable=g-import-not-at-top
    from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top

    digits = sk_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    xtr, xte, ytr, yte = train_test_split(
        images, digits.target.astype(np.int32), test_size=test_fraction, random_state=seed,
        stratify=digits.target,
    )
    return Dataset(xtr, ytr, xte, yte, tuple(str(k) for k in range(10)), "sklearn:digits")


def symmetric_label_noise(labels: np.ndarray, rate: float, num_classes: int,
                          seed: int = 123) -> np.ndarray:
    """Class-balanced symmetric label noise (Wang et al. 2019, "Symmetric Cross Entropy for Robust
    Learning with Noisy Labels"; YisenWang/symmetric_cross_entropy_for_noisy_labels).

    int(rate * N) labels are flipped: int(rate * N / K) per class, drawn without replacement among
    that class's examples, each replaced by a class drawn uniformly from the K - 1 *other* classes,
    so the realised noise rate is exactly `rate` for balanced classes. Deterministic for `seed`.

    Args:
      labels: int [N] clean labels.
      rate: noise rate in [0, 1).
      num_classes: K.
      seed: numpy seed (123 in the reference code).

    Returns:
      int32 [N] noisy labels.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"label noise rate must be in [0, 1), got {rate}.")
    rng = np.random.RandomState(seed)
    noisy = np.array(labels, dtype=np.int32, copy=True)
    per_class = int(rate * len(labels)) // num_classes
    for k in range(num_classes):
        members = np.flatnonzero(labels == k)
        chosen = rng.choice(members, min(per_class, len(members)), replace=False)
        other = rng.randint(0, num_classes - 1, size=len(chosen))
        noisy[chosen] = other + (other >= k)
    return noisy
