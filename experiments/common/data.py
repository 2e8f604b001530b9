"""Datasets as in-memory uint8 arrays: image folders (cached as .npy), TFDS, sklearn digits.

Every loader returns a `Dataset` of host numpy arrays; `parallel.replicate` moves it to the devices
once, and the train step gathers batches there (style.md section 5, "data on device").
"""

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
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class DataError(ValueError):
    """Raised when the requested data cannot be found or read; the message says what to do."""


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
    layout = "expected DIR/train/<class>/<image> and DIR/test/<class>/<image>"
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
    """Decodes one image file to uint8 [H, W, 3] RGB."""
    from PIL import Image  # pylint: disable=g-import-not-at-top

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _decode_split(split_dir: str, class_names: tuple) -> tuple:
    """Decodes all images of one split; returns (uint8 [N, H, W, 3], int32 [N])."""
    files = _list_split(split_dir)
    paths = [p for name in class_names for p in files[name]]
    labels = np.array(
        [k for k, name in enumerate(class_names) for _ in files[name]], dtype=np.int32
    )
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        images = list(pool.map(_decode, paths, chunksize=256))
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DataError(f"images in {split_dir!r} have different sizes {sorted(shapes)[:4]}; "
                        "resize them to one size first.")
    return np.stack(images), labels


def cache_dir_for(data_dir: str, fallback_dir: str) -> str:
    """Returns DATA_DIR/.npy_cache when DATA_DIR is writable, else `fallback_dir`."""
    return os.path.join(data_dir, ".npy_cache") if os.access(data_dir, os.W_OK) else fallback_dir


def load_image_folder(data_dir: str, cache_dir: str | None = None) -> Dataset:
    """Loads DIR/{train,test}/<class>/* once, caching decoded arrays as .npy files.

    The cache is keyed by the class names and per-split file counts; it is rebuilt when they change.

    Args:
      data_dir: root of the image-folder layout.
      cache_dir: where to keep the .npy cache; default DIR/.npy_cache (if writable).

    Returns:
      A `Dataset` with labels given by the alphabetical order of the class folders. Each split is
      put in one fixed random order (numpy seeds 0 for train, 1 for test), so that "the first N
      training (test) images" is a class-mixed subset rather than the first classes.
    """
    class_names = check_image_folder(data_dir)
    cache_dir = cache_dir or cache_dir_for(data_dir, os.path.join(os.getcwd(), ".npy_cache"))
    counts = {s: sum(len(v) for v in _list_split(os.path.join(data_dir, s)).values())
              for s in ("train", "test")}
    meta = {"source": os.path.abspath(data_dir), "class_names": list(class_names),
            "counts": counts, "train_order": "numpy RandomState(0) permutation",
            "test_order": "numpy RandomState(1) permutation"}
    meta_path = os.path.join(cache_dir, "meta.json")
    arrays = ("train_images", "train_labels", "test_images", "test_labels")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            if json.load(f) == meta:
                return Dataset(
                    *(np.load(os.path.join(cache_dir, a + ".npy")) for a in arrays), class_names
                )
    train = _decode_split(os.path.join(data_dir, "train"), class_names)
    order = np.random.RandomState(0).permutation(len(train[1]))
    train = (train[0][order], train[1][order])
    test = _decode_split(os.path.join(data_dir, "test"), class_names)
    order = np.random.RandomState(1).permutation(len(test[1]))
    test = (test[0][order], test[1][order])
    os.makedirs(cache_dir, exist_ok=True)
    for name, arr in zip(arrays, (*train, *test)):
        np.save(os.path.join(cache_dir, name + ".npy"), arr)
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    return Dataset(*train, *test, class_names)


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
            "Pass --data_dir DIR with the image-folder layout (DIR/train/<class>/*, "
            "DIR/test/<class>/*), e.g. extract ../shared/data/cifar10-jpeg.tar.gz into DIR."
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
    return Dataset(xtr, ytr, xte, yte, tuple(features["label"].names))


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
    return Dataset(xtr, ytr, xte, yte, tuple(str(k) for k in range(10)))


def symmetric_label_noise(labels: np.ndarray, rate: float, num_classes: int,
                          seed: int = 123) -> np.ndarray:
    """Class-balanced symmetric label noise (Wang et al. 2019; algorithms.md section 6).

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
