"""Datasets as in-memory uint8 arrays: image folders (decoded once, cached), TFDS, sklearn digits.

Every loader returns a `Dataset` of host numpy arrays; `ArraySource` moves it to the devices once
and gathers each step's batch there (`source.Source`, the loop's data contract), so no input
pipeline runs on the host during training.
"""

import hashlib
import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import parallel
from experiments.common.data import folders
from experiments.common.data.source import DataError
from experiments.common.data.source import Source
from experiments.common.data.source import check_seed
from experiments.common.data.source import member_keys

IMAGE_SUFFIXES = folders.IMAGE_SUFFIXES
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


IMAGE_FOLDER_LAYOUT = (
    "the image-folder layout DIR/train/<class>/<image> and DIR/test/<class>/<image>"
)


def _list_split(split_dir: str, class_names: tuple | None = None) -> dict:
    """{class_name: sorted image paths} for DIR/<class>/* of one split (`folders.list_classes`)."""
    return folders.list_classes(
        split_dir, layout=f"expected {IMAGE_FOLDER_LAYOUT}", class_names=class_names
    )


def check_image_folder(data_dir: str) -> tuple:
    """Validates the image-folder layout DIR/{train,test}/<class>/<image> and returns class names.

    Raises:
      DataError: with a message saying what is missing and the expected layout.
    """
    layout = f"expected {IMAGE_FOLDER_LAYOUT}"
    if not os.path.isdir(data_dir):
        raise DataError(
            f"--config.data.data_dir {data_dir!r} does not exist. Extract the data first, e.g. "
            f"`mkdir -p {data_dir} && tar xzf cifar10-jpeg.tar.gz -C {data_dir}` ({layout})."
        )
    names = None
    for split in ("train", "test"):
        split_dir = os.path.join(data_dir, split)
        if not os.path.isdir(split_dir):
            raise DataError(
                f"--config.data.data_dir {data_dir!r} has no '{split}' folder; {layout}."
            )
        names = tuple(_list_split(split_dir, names))
    return names


def _decode(path: str) -> np.ndarray:
    """Decodes one image file to uint8 [H, W, 3] RGB; a file PIL cannot read raises DataError."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    from PIL import UnidentifiedImageError  # pylint: disable=g-import-not-at-top

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError as error:
        raise DataError(
            f"cannot decode {path!r} (not an image format PIL can read); replace or "
            "delete that file."
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        what = " ".join(str(error).split()) or type(error).__name__
        raise DataError(f"cannot decode {path!r} ({what}); replace or delete that file.") from error


def _decode_split(split_dir: str, class_names: tuple) -> tuple:
    """Decodes all images of one split; returns (uint8 [N, H, W, 3], int32 [N])."""
    files = _list_split(split_dir, class_names)
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
        examples = ", ".join(
            f"{h}x{w} ({os.path.relpath(p, split_dir)})" for (h, w), p in list(first.items())[:4]
        )
        raise DataError(
            f"the images in {split_dir!r} have different sizes: {examples}; resize "
            "them to one size first."
        )
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
        for name, paths in sorted(_list_split(split_dir, class_names).items()):
            for path in paths:
                st = os.stat(path)
                rel = os.path.relpath(path, data_dir)
                digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def load_image_folder(
    data_dir: str, cache_dir: str | None = None, write_cache: bool = True
) -> Dataset:
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
        for stale in os.scandir(cache_dir):  # not glob: the folder's name may hold '[' or '*'
            if (
                stale.name.startswith("images-")
                and stale.name.endswith(".npz")
                and stale.path != cache_path
            ):
                os.remove(stale.path)
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
            f"--config.data.tfds_data_dir, or pass --config.data.data_dir DIR with "
            f"{IMAGE_FOLDER_LAYOUT}."
        )


def load_tfds(
    name: str = "cifar10", tfds_data_dir: str | None = None, chunk_size: int = 10_000
) -> Dataset:
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
        ds = builder.as_dataset(
            split=split, batch_size=chunk_size, as_supervised=True, shuffle_files=False
        )
        chunks = list(tfds.as_numpy(ds))
        if not chunks:
            raise DataError(f"TFDS '{name}' split '{split}' is empty.")
        return (
            np.concatenate([c[0] for c in chunks]).astype(np.uint8),
            np.concatenate([c[1] for c in chunks]).astype(np.int32),
        )

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
        images,
        digits.target.astype(np.int32),
        test_size=test_fraction,
        random_state=seed,
        stratify=digits.target,
    )
    return Dataset(xtr, ytr, xte, yte, tuple(str(k) for k in range(10)), "sklearn:digits")


def symmetric_label_noise(
    labels: np.ndarray, rate: float, num_classes: int, seed: int = 123
) -> np.ndarray:
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


def take_subsets(dataset: Dataset, *, num_train: int = 0, num_eval: int = 0) -> Dataset:
    """The first `num_train` training and `num_eval` validation and test examples (0: all).

    The loaders put each split in a class-mixed order, so a prefix holds every class.
    """
    if num_train < 0 or num_eval < 0:
        raise ValueError("the numbers of examples must be >= 0 (0 = all).")
    n, m = num_train or None, num_eval or None
    ds = dataset._replace(
        train_images=dataset.train_images[:n],
        train_labels=dataset.train_labels[:n],
        test_images=dataset.test_images[:m],
        test_labels=dataset.test_labels[:m],
    )
    if dataset.has_validation:
        ds = ds._replace(val_images=dataset.val_images[:m], val_labels=dataset.val_labels[:m])
    return ds


def pad_to_multiple(images: np.ndarray, labels: np.ndarray, multiple: int):
    """Zero-pads [M, ...] arrays to a multiple of `multiple`; returns (images, labels, mask)."""
    m = len(labels)
    extra = (-m) % multiple
    mask = np.concatenate([np.ones(m, bool), np.zeros(extra, bool)])
    images = np.concatenate([images, np.zeros((extra, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(extra, labels.dtype)])
    return images, labels, mask


def epoch_permutation(key: jax.Array, epoch: jax.Array, num_examples: int) -> jax.Array:
    """int32 [N] visiting order of epoch `epoch`, a pure function of (key, epoch)."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)


def flatten_views(views: jax.Array) -> jax.Array:
    """[B, V, ...] views -> [B * V, ...] examples (the views of one example adjacent)."""
    return views.reshape(-1, *views.shape[2:])


class ArraySource(Source):
    """A `Dataset` held on the devices: each step's batch is gathered and augmented there.

    Step s of an epoch visits positions [i*B, (i+1)*B) (i = s % steps_per_epoch) of the epoch's
    permutation (`epoch_permutation` with the seed's 'shuffle' key); its augmentation uses
    fold_in(the seed's 'augment' key, s). Takes a tuple of seeds (population runs): each member
    gets its own order and augmentation.

    Args:
      dataset: the arrays (labels possibly noisy already).
      augment: `augment(key, images) -> images`, e.g. `augment.random_crop_flip`; None: none.
      train_views: `train_views(key, images) -> [B, V, ...]` in place of `augment`: each of the V
        views of an image is a training example with the image's label (B * V examples a step).
      eval_views: `eval_views(images) -> [B, V, ...]`: the evaluation batches carry V views of
        every example (for the multiview evaluator, e.g. TenCrop).
      identity: extra fields a resume must match (the subset sizes, the label-noise settings).
      info: extra fields for summary.json.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        augment=None,
        train_views=None,
        eval_views=None,
        identity: dict | None = None,
        info: dict | None = None,
    ):
        if augment is not None and train_views is not None:
            raise ValueError("give either augment or train_views, not both.")
        self.dataset = dataset
        self.class_names = dataset.class_names
        self.splits = ("val", "test") if dataset.has_validation else ("test",)
        self._augment, self._train_views, self._eval_views = augment, train_views, eval_views
        self._identity, self._info = identity or {}, info or {}
        self._on_device, self._jitted = {}, {}
        image = jax.ShapeDtypeStruct((1, *dataset.train_images.shape[1:]), jnp.uint8)
        if eval_views is not None:
            self.input_shape = tuple(jax.eval_shape(eval_views, image).shape[2:])
        elif train_views is not None:
            shape = jax.eval_shape(train_views, jax.random.key(0), image).shape
            self.input_shape = tuple(shape[2:])
        else:
            self.input_shape = tuple(dataset.train_images.shape[1:])

    def steps_per_epoch(self, batch_size: int) -> int:
        n = len(self.dataset.train_labels)
        if not 0 < batch_size <= n:
            raise ValueError(
                f"batch_size {batch_size} must be in [1, {n}] (the training examples)."
            )
        return n // batch_size

    def _device(self, name: str, mesh, arrays):
        """The arrays placed on every device of `mesh` once (replicated)."""
        key = (name, id(mesh))
        if key not in self._on_device:
            self._on_device[key] = tuple(parallel.put_replicated(a, mesh) for a in arrays)
        return self._on_device[key]

    def _cached(self, key, build):
        """A jitted function built once per (kind, sizes, mesh): no recompilation per epoch."""
        if key not in self._jitted:
            self._jitted[key] = build()
        return self._jitted[key]

    def _make_batch_fn(self, batch_size: int, steps_per_epoch: int, mesh):
        batch_sharded = parallel.batch_sharded(mesh)

        def batch(images_all, labels_all, perm, step, aug_key):
            i = step % steps_per_epoch
            idx = jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)
            idx = jax.lax.with_sharding_constraint(idx, batch_sharded)
            images, labels = images_all[idx], labels_all[idx]
            step_key = jax.random.fold_in(aug_key, step)
            if self._train_views is not None:
                views = self._train_views(step_key, images)
                labels = jnp.repeat(labels, views.shape[1])
                images = flatten_views(views)
            elif self._augment is not None:
                images = self._augment(step_key, images)
            return {"image": images, "label": labels}

        return batch

    def train_batches(self, *, batch_size, start_step, num_steps, mesh, seed):
        population = len(check_seed(seed, population=True)) > 1 or isinstance(seed, tuple)
        spe = self.steps_per_epoch(batch_size)
        n = len(self.dataset.train_labels)
        images, labels = self._device(
            "train", mesh, (self.dataset.train_images, self.dataset.train_labels)
        )
        shuffle, aug = member_keys(seed, "shuffle"), member_keys(seed, "augment")

        def build():
            permute = lambda key, epoch: epoch_permutation(key, epoch, n)  # noqa: E731
            batch = self._make_batch_fn(batch_size, spe, mesh)
            if population:
                permute = jax.vmap(permute, in_axes=(0, None))
                batch = jax.vmap(batch, in_axes=(None, None, 0, None, 0))
            return (jax.jit(permute, out_shardings=parallel.replicated(mesh)), jax.jit(batch))

        permute, batch = self._cached(("train", batch_size, population, id(mesh)), build)
        perm, perm_epoch = None, None
        for step in range(start_step, num_steps):
            if step // spe != perm_epoch:
                perm_epoch = step // spe
                perm = permute(shuffle, perm_epoch)
            yield batch(images, labels, perm, step, aug)

    def eval_batches(self, split, *, batch_size, mesh):
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; this dataset has {self.splits}.")
        arrays = (
            (self.dataset.val_images, self.dataset.val_labels)
            if split == "val"
            else (self.dataset.test_images, self.dataset.test_labels)
        )
        images, labels, mask = self._device(
            f"{split}/{batch_size}", mesh, pad_to_multiple(*arrays, batch_size)
        )
        batch_sharded = parallel.batch_sharded(mesh)
        views = self._eval_views

        def batch(images_all, labels_all, mask_all, i):
            take = lambda a: jax.lax.with_sharding_constraint(  # noqa: E731
                jax.lax.dynamic_slice_in_dim(a, i * batch_size, batch_size), batch_sharded
            )
            images = take(images_all)
            return {
                "image": images if views is None else views(images),
                "label": take(labels_all),
                "mask": take(mask_all),
            }

        jitted = self._cached(("eval", batch_size, id(mesh)), lambda: jax.jit(batch))
        for i in range(len(labels) // batch_size):
            yield jitted(images, labels, mask, i)

    def identity(self) -> dict:
        ds = self.dataset
        digest = hashlib.sha256()
        splits = (ds.train_labels, ds.test_labels) + ((ds.val_labels,) if ds.has_validation else ())
        for labels in splits:
            digest.update(np.ascontiguousarray(labels, np.int64).tobytes())
        out = {
            "source": ds.source,
            "num_classes": ds.num_classes,
            "image_shape": list(ds.train_images.shape[1:]),
            "num_train_examples": int(len(ds.train_labels)),
            "num_test_examples": int(len(ds.test_labels)),
            "labels_sha256": digest.hexdigest()[:16],
        }
        if ds.has_validation:
            out["num_val_examples"] = int(len(ds.val_labels))
        return {**out, **self._identity}

    def info(self) -> dict:
        ds = self.dataset
        out = {
            "num_train_examples": int(len(ds.train_labels)),
            "num_test_examples": int(len(ds.test_labels)),
        }
        if ds.has_validation:
            out["num_val_examples"] = int(len(ds.val_labels))
        return {**out, **self._info}


NPZ_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def load_npz(path: str) -> Dataset:
    """A dataset saved as arrays: train_images, train_labels, test_images, test_labels (uint8
    [N, ...] images, int [N] labels), optionally val_images, val_labels and class_names.

    Raises DataError naming the file and the missing arrays.
    """
    if not os.path.isfile(path):
        raise DataError(f"config.data.npz {path!r} is not a file.")
    with np.load(path, allow_pickle=False) as f:
        missing = [a for a in NPZ_ARRAYS if a not in f.files]
        if missing:
            raise DataError(f"{path!r} lacks the arrays {missing}; it needs {list(NPZ_ARRAYS)}.")
        arrays = {k: f[k] for k in f.files}
    labels = np.concatenate([arrays["train_labels"], arrays["test_labels"]])
    names = (
        tuple(str(n) for n in arrays["class_names"])
        if "class_names" in arrays
        else tuple(str(k) for k in range(int(labels.max()) + 1))
    )
    val = (arrays.get("val_images"), arrays.get("val_labels"))
    if (val[0] is None) != (val[1] is None):
        raise DataError(f"{path!r} has one of val_images and val_labels but not both.")
    return Dataset(
        arrays["train_images"].astype(np.uint8),
        arrays["train_labels"].astype(np.int32),
        arrays["test_images"].astype(np.uint8),
        arrays["test_labels"].astype(np.int32),
        names,
        f"npz:{os.path.abspath(path)}",
        None if val[0] is None else val[0].astype(np.uint8),
        None if val[1] is None else val[1].astype(np.int32),
    )


def save_npz(path: str, dataset: Dataset) -> None:
    """Writes `dataset` in `load_npz`'s format."""
    arrays = {k: getattr(dataset, k) for k in NPZ_ARRAYS}
    if dataset.has_validation:
        arrays.update(val_images=dataset.val_images, val_labels=dataset.val_labels)
    np.savez(path, class_names=np.asarray(dataset.class_names), **arrays)


def with_label_noise(dataset: Dataset, rate: float, seed: int) -> tuple:
    """(the dataset with `symmetric_label_noise` on its training labels, the realised rate)."""
    if rate <= 0:
        return dataset, 0.0
    noisy = symmetric_label_noise(dataset.train_labels, rate, dataset.num_classes, seed=seed)
    return (dataset._replace(train_labels=noisy), float(np.mean(noisy != dataset.train_labels)))


def add_subset_fields(data) -> None:
    """Adds the fields of `prepare` to a config's `data`: subsets and symmetric label noise."""
    data.npz = ""  # arrays file (train/test images and labels) instead of the dataset's files
    data.num_train_examples = 0  # use the first N training examples (0 = all)
    data.num_eval_examples = 0  # evaluate on the first N validation / test examples (0 = all)
    data.label_noise = 0.0  # symmetric label-noise rate in [0, 1) on the training labels
    data.noise_seed = 123  # numpy seed of the noise (123 as in Wang et al. 2019)


def check_subset_fields(config) -> None:
    """Validates the `add_subset_fields` fields (messages name them)."""
    from experiments.common import config as cfg  # pylint: disable=import-outside-toplevel

    for path in ("data.num_train_examples", "data.num_eval_examples", "data.noise_seed"):
        cfg.check(config, path, cfg.non_negative_int, "an integer >= 0")
    cfg.check(config, "data.label_noise", lambda r: 0 <= r < 1, "in [0, 1)")


def prepare(dataset: Dataset, data) -> tuple:
    """(dataset, info) after the subsets and the label noise of `data` (`add_subset_fields`)."""
    ds = take_subsets(dataset, num_train=data.num_train_examples, num_eval=data.num_eval_examples)
    ds, realised = with_label_noise(ds, data.label_noise, data.noise_seed)
    return ds, {"label_noise": data.label_noise, "realised_noise_rate": realised}
