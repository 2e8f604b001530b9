"""Streaming ImageNet-style input: tf.data decoding and augmentation, host shards, global arrays.

Sources: an image-folder tree (DIR/train/<class>/*, DIR/val/<class>/*; how many users keep
ImageNet) and TFDS builders (`imagenet2012`, `oxford_flowers102`). Every host reads only its own
share, decodes and augments it in parallel tf.data workers (the idioms of the Flax ImageNet example,
google/flax examples/imagenet/input_pipeline.py, and of TFDS), and the batches become globally
sharded jax.Arrays (`jax.make_array_from_process_local_data`), prefetched to the devices.

Determinism. Global train batch t (t = the global step) is a pure function of (seed, t):
- image folder: epoch e visits the images in the order argsort(stateless_uniform(seed, e)); global
  batch t is positions [b*B, (b+1)*B) of epoch t // steps_per_epoch with b = t % steps_per_epoch,
  and host p takes the p-th of its `process_count` equal slices. The batches are therefore the same
  for any number of hosts and devices, and a run resumed at step t reads exactly what it would
  have read (no examples are skipped over: the epoch's order is indexed directly);
- TFDS: each host reads its `tfds.split_for_jax_process` share, files and examples shuffled with
  seeds derived from (seed, epoch); a resumed run skips the epoch's first examples (read, not
  decoded). The stream depends on the number of hosts, not on the number of devices.
The augmentation of the example at global position i = t*B + j uses the stateless seed (seed, i).
The last partial train batch of an epoch is dropped; evaluation pads to whole batches and masks
(every validation image is seen exactly once).

Augmentation: Inception-style random-resized crop (Szegedy et al. 2015: area in [0.08, 1], aspect
ratio in [3/4, 4/3], 10 attempts, else a centre crop) resized bilinearly to `image_size`, a random
horizontal flip, and optionally AlexNet-style PCA lighting (Krizhevsky et al. 2012; std 0.1 in the
pycls recipe, facebookresearch/pycls pycls/datasets/transforms.py). Evaluation: the centre crop
of 224/256 of the shorter side resized to `image_size` (= resize 256, centre crop 224 at 224).
Batches are uint8 NHWC; mean/std normalisation happens on the device (a quarter of the transfer).
"""

import collections
import dataclasses
import glob
import math
import os
from typing import Iterator

import jax
import numpy as np

from experiments.common import report, streaming

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_CROP_FRACTION = 224 / 256
# AlexNet PCA lighting on ImageNet (Krizhevsky et al. 2012), values as in pycls and fb.resnet.torch.
PCA_EIGVALS = (0.2175, 0.0188, 0.0045)
PCA_EIGVECS = ((-0.5675, 0.7192, 0.4009),
               (-0.5808, -0.0045, -0.8140),
               (-0.5836, -0.6948, 0.4203))
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
TFDS_DATASETS = ("imagenet2012", "oxford_flowers102")
# TFDS split names of (train, evaluation) per dataset.
TFDS_SPLITS = {"imagenet2012": ("train", "validation"), "oxford_flowers102": ("train", "test")}


class MissingDataError(ValueError):
    """The data a run needs is not where it was looked for; the message says where to put it."""


def _tf():
    """TensorFlow for tf.data, kept off the accelerators (`report.tensorflow_off_accelerators`)."""
    return report.tensorflow_off_accelerators()


@dataclasses.dataclass(frozen=True)
class FolderSplit:
    """The files of one split of an image folder, sorted by (class, file name)."""

    paths: tuple
    labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class Source:
    """Where the images come from.

    Attributes:
      kind: 'folder' or 'tfds'.
      name: dataset name ('folder' or the TFDS name).
      class_names: label order.
      num_train, num_eval: examples in the train / evaluation split.
      train, eval: FolderSplit (folder) or TFDS split names (tfds).
      data_dir: the folder root, or the TFDS data directory (None: TFDS's default).
    """

    kind: str
    name: str
    class_names: tuple
    num_train: int
    num_eval: int
    train: object
    eval: object
    data_dir: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _list_split(root: str, split: str, class_names: tuple | None) -> tuple:
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise MissingDataError(f"--data_dir {root!r} has no {split}/ folder; expected "
                               f"DIR/train/<class>/*.JPEG and DIR/val/<class>/*.")
    names = class_names or tuple(sorted(
        d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))))
    paths, labels = [], []
    for k, name in enumerate(names):
        files = sorted(f for f in glob.glob(os.path.join(folder, name, "*"))
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        paths += files
        labels += [k] * len(files)
    if not paths:
        raise MissingDataError(f"no images (*.JPEG, *.jpg, *.png) under {folder!r}.")
    unknown = sorted(set(os.listdir(folder)) - set(names)) if class_names else []
    if unknown:
        raise MissingDataError(f"{folder!r} has class folders {unknown[:5]} not in train/.")
    return names, FolderSplit(tuple(paths), np.asarray(labels, np.int32))


def folder_source(data_dir: str, eval_split: str = "val") -> Source:
    """An image-folder source: DATA_DIR/train/<class>/* and DATA_DIR/<eval_split>/<class>/*.

    Classes are the train sub-folders in sorted order (ImageNet's wnids sort into the usual label
    order). Raises MissingDataError naming what is missing.
    """
    if not data_dir or not os.path.isdir(data_dir):
        raise MissingDataError(f"--data_dir {data_dir!r} is not a directory.")
    names, train = _list_split(data_dir, "train", None)
    _, evaluation = _list_split(data_dir, eval_split, names)
    return Source("folder", "folder", names, len(train.labels), len(evaluation.labels), train,
                  evaluation, data_dir)


def tfds_source(name: str, data_dir: str | None = None, *, prepare: bool = True) -> Source:
    """A TFDS source, checked before any work.

    imagenet2012 needs the manual download: when it is not prepared and ILSVRC2012_img_train.tar
    or ILSVRC2012_img_val.tar is missing from the builder's manual directory, MissingDataError
    says where to put them. A dataset that is not prepared otherwise is downloaded and prepared
    (needs network access) by process 0 when `prepare` (False under `tfds.testing.mock_data`).
    """
    if name not in TFDS_DATASETS:
        raise ValueError(f"unknown TFDS dataset {name!r}; choose one of {TFDS_DATASETS}.")
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    _tf()
    builder = tfds.builder(name, data_dir=data_dir)
    train_split, eval_split = TFDS_SPLITS[name]
    if not _is_prepared(builder):
        if name == "imagenet2012":
            root = str(builder.data_dir_root)
            manual = os.path.join(root, "downloads", "manual")
            needed = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
            missing = [f for f in needed if not os.path.exists(os.path.join(manual, f))]
            if missing:
                raise MissingDataError(
                    f"TFDS imagenet2012 is not prepared in {root!r} and needs a "
                    f"manual download: put {' and '.join(missing)} (from image-net.org, "
                    f"ILSVRC2012) in {manual!r} (or pass --data_dir DIR to read them from "
                    "DIR/downloads/manual), then run again; preparing takes a few hours once. "
                    "An image-folder copy (DIR/train/<wnid>/*.JPEG, DIR/val/<wnid>/*.JPEG) works "
                    "too with --dataset folder.")
        if prepare and jax.process_index() == 0:
            builder.download_and_prepare()
    names = tuple(builder.info.features["label"].names)
    return Source("tfds", name, names, _num_examples(builder, train_split),
                  _num_examples(builder, eval_split), train_split, eval_split, data_dir)


def _num_examples(builder, split: str) -> int:
    """The split's size from the dataset info; counted when the info has none (mock data)."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    try:
        return builder.info.splits[split].num_examples
    except KeyError:
        ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        return int(ds.reduce(0, lambda n, _: n + 1))


def _is_prepared(builder) -> bool:
    try:
        return bool(builder.is_prepared())
    except AttributeError:
        return os.path.exists(os.path.join(builder.data_dir, "dataset_info.json"))


def make_source(dataset: str, data_dir: str | None) -> Source:
    """`--dataset folder | imagenet2012 | oxford_flowers102` with `--data_dir`."""
    if dataset == "folder":
        return folder_source(data_dir)
    return tfds_source(dataset, data_dir)


# ---------------------------------------------------------------------------------------------
# Decoding and augmentation (TensorFlow graph functions, run in tf.data's parallel map).


def _image_shape(tf, encoded):
    """[height, width] of an encoded JPEG (header only) or PNG/other (decoded)."""
    return tf.cond(tf.io.is_jpeg(encoded),
                   lambda: tf.image.extract_jpeg_shape(encoded)[:2],
                   lambda: tf.shape(tf.io.decode_image(encoded, channels=3,
                                                       expand_animations=False))[:2])


def _decode_crop(tf, encoded, window):
    """RGB uint8 crop [h, w, 3] of window (top, left, h, w); grayscale and CMYK become RGB."""
    def other():
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])

    image = tf.cond(tf.io.is_jpeg(encoded),
                    lambda: tf.image.decode_and_crop_jpeg(encoded, window, channels=3), other)
    image.set_shape([None, None, 3])
    return image


def _centre_window(tf, shape, fraction):
    short = tf.cast(tf.reduce_min(shape), tf.float32)
    size = tf.maximum(tf.cast(tf.round(fraction * short), tf.int32), 1)
    return tf.stack([(shape[0] - size + 1) // 2, (shape[1] - size + 1) // 2, size, size])


def _resize_uint8(tf, image, size):
    image = tf.image.resize(image, [size, size], method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


TRAIN_CROPS = ("inception", "resize_random", "resize")
EVAL_CROPS = ("short_side", "square", "resize")


def _square_size(image_size: int) -> int:
    """R = round(S * 256 / 224): the resize before a centre or random crop of S."""
    return round(image_size / EVAL_CROP_FRACTION)


def decode_train(encoded, seed, *, image_size: int, crop: str = "inception",
                 lighting_std: float = 0.0):
    """A random crop + flip (+ PCA lighting) of one encoded image -> uint8 [S, S, 3].

    crop 'inception': the random-resized crop of the module docstring. crop 'resize_random': the
    whole image resized to R x R (R = S*256/224, aspect not kept), a random S x S crop (the OLS
    fine-grained recipe, zhangchbin/OnlineLabelSmoothing fine-grained/main.py). crop 'resize': the
    whole image resized to S x S, no crop (aligned faces, insightface arcface_torch's flip-only
    augmentation). `seed` is an int64
    [2] stateless seed; the same seed gives the same crop, flip and lighting.
    """
    tf = _tf()
    seeds = tf.random.experimental.stateless_split(seed, 4)
    shape = _image_shape(tf, encoded)
    if crop == "resize":
        image = _resize_uint8(tf, _decode_crop(tf, encoded, tf.concat([[0, 0], shape], 0)),
                              image_size)
    elif crop == "resize_random":
        r = _square_size(image_size)
        image = _resize_uint8(tf, _decode_crop(tf, encoded, tf.concat([[0, 0], shape], 0)), r)
        image = tf.image.stateless_random_crop(image, [image_size, image_size, 3], seeds[3])
    else:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.concat([shape, [3]], 0), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seeds[0], min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        # All attempts failed (the sampler then returns the whole image): a centre crop instead.
        whole = tf.reduce_all(tf.equal(size[:2], shape))
        window = tf.where(whole, _centre_window(tf, shape, EVAL_CROP_FRACTION), window)
        image = _resize_uint8(tf, _decode_crop(tf, encoded, window), image_size)
    image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    if lighting_std > 0:
        alpha = tf.random.stateless_normal([3], seeds[2], stddev=lighting_std)
        rgb = tf.linalg.matvec(tf.constant(PCA_EIGVECS), alpha * tf.constant(PCA_EIGVALS))
        image = tf.cast(tf.clip_by_value(tf.round(tf.cast(image, tf.float32) + 255.0 * rgb),
                                         0.0, 255.0), tf.uint8)
    return image


def decode_eval(encoded, *, image_size: int, crop: str = "short_side"):
    """The evaluation view of one encoded image -> uint8 [S, S, 3].

    crop 'short_side': the centre crop of 224/256 of the shorter side resized to S (resize 256,
    centre crop 224). crop 'square': the image resized to R x R (R = S*256/224), centre S x S.
    crop 'resize': the whole image resized to S x S (aligned faces).
    """
    tf = _tf()
    shape = _image_shape(tf, encoded)
    if crop == "resize":
        return _resize_uint8(tf, _decode_crop(tf, encoded, tf.concat([[0, 0], shape], 0)),
                             image_size)
    if crop == "square":
        r = _square_size(image_size)
        image = _resize_uint8(tf, _decode_crop(tf, encoded, tf.concat([[0, 0], shape], 0)), r)
        return tf.image.crop_to_bounding_box(image, (r - image_size) // 2,
                                             (r - image_size) // 2, image_size, image_size)
    window = _centre_window(tf, shape, EVAL_CROP_FRACTION)
    return _resize_uint8(tf, _decode_crop(tf, encoded, window), image_size)


# ---------------------------------------------------------------------------------------------
# Per-host streams of host-local numpy batches.


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """The input stream of a run.

    Attributes:
      global_batch: train batch over all hosts (a multiple of the process count).
      eval_batch: evaluation batch over all hosts.
      image_size: train crop and eval size S.
      seed: shuffling and augmentation seed.
      train_crop: one of TRAIN_CROPS (`decode_train`).
      eval_crop: one of EVAL_CROPS (`decode_eval`).
      lighting_std: PCA lighting strength (0 = off).
      workers: parallel decode calls per host (tf.data.AUTOTUNE when 0).
      shuffle_buffer: TFDS example shuffle buffer (the folder order is a full permutation).
    """

    global_batch: int
    eval_batch: int
    image_size: int
    seed: int = 0
    train_crop: str = "inception"
    eval_crop: str = "short_side"
    lighting_std: float = 0.0
    workers: int = 0
    shuffle_buffer: int = 16 * 1024

    def __post_init__(self):
        if self.train_crop not in TRAIN_CROPS:
            raise ValueError(f"train_crop must be one of {TRAIN_CROPS}, got {self.train_crop!r}.")
        if self.eval_crop not in EVAL_CROPS:
            raise ValueError(f"eval_crop must be one of {EVAL_CROPS}, got {self.eval_crop!r}.")
        if self.image_size < 8:
            raise ValueError(f"--image_size must be at least 8, got {self.image_size}.")
        if self.global_batch <= 0 or self.eval_batch <= 0:
            raise ValueError("the train and eval batch sizes must be positive.")

    def local(self, batch: int) -> int:
        count = jax.process_count()
        if batch % count:
            raise ValueError(f"batch {batch} must be a multiple of the {count} processes.")
        return batch // count


def steps_per_epoch(source: Source, config: StreamConfig) -> int:
    """Train steps per epoch (the last partial batch is dropped)."""
    n = source.num_train
    if source.kind == "tfds":  # each host's share, equal sizes (drop_remainder)
        n = n // jax.process_count() * jax.process_count()
    steps = n // config.global_batch
    if steps == 0:
        raise ValueError(f"--batch_size {config.global_batch} exceeds the {n} training images.")
    return steps


def _options(tf, workers: int):
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = workers or 0
    return options


def _epoch_order(tf, n: int, seed: int, epoch: int):
    """int32 [n]: the folder's visiting order in `epoch`, a pure function of (seed, epoch)."""
    keys = tf.random.stateless_uniform([n], seed=tf.constant([seed, epoch], tf.int64))
    return tf.argsort(keys, stable=True)


def _folder_epoch(tf, source: Source, config: StreamConfig, epoch: int, first_step: int,
                  spe: int):
    """(encoded, label, global position) of this host's examples from step `first_step` on."""
    gb, local, p = config.global_batch, config.local(config.global_batch), jax.process_index()
    order = _epoch_order(tf, source.num_train, config.seed, epoch)[:spe * gb]
    position = tf.range(spe * gb, dtype=tf.int64) + epoch * spe * gb
    pick = lambda a: tf.reshape(  # noqa: E731
        tf.reshape(a, [spe, gb])[first_step:, p * local:(p + 1) * local], [-1])
    paths = tf.constant(source.train.paths)
    labels = tf.constant(source.train.labels)
    ds = tf.data.Dataset.from_tensor_slices((pick(order), pick(position)))
    return ds.map(lambda i, pos: (tf.io.read_file(paths[i]), labels[i], pos),
                  num_parallel_calls=config.workers or tf.data.AUTOTUNE, deterministic=True)


def _tfds_epoch(tf, source: Source, config: StreamConfig, epoch: int, first_step: int,
                spe: int):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    local, p = config.local(config.global_batch), jax.process_index()
    split = tfds.split_for_jax_process(source.train, drop_remainder=True)
    epoch_seed = (config.seed * 1_000_003 + epoch) % (2**31 - 1)
    read = tfds.ReadConfig(shuffle_seed=epoch_seed, interleave_cycle_length=16,
                           options=_options(tf, config.workers))
    ds = tfds.builder(source.name, data_dir=source.data_dir).as_dataset(
        split=split, shuffle_files=True, read_config=read,
        decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.shuffle(config.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    ds = ds.take(spe * local).skip(first_step * local)
    # Global position of this host's j-th example in step t: t*B + p*local + j % local.
    base = epoch * spe * config.global_batch + p * local
    return ds.enumerate(first_step * local).map(
        lambda k, ex: (ex["image"], tf.cast(ex["label"], tf.int32),
                       base + (k // local) * config.global_batch + k % local))


def train_batches(source: Source, config: StreamConfig, *, start_step: int,
                  num_steps: int) -> Iterator[dict]:
    """This host's train batches for global steps [start_step, num_steps).

    Yields {'image': uint8 [B/P, S, S, 3], 'label': int32 [B/P]} numpy batches (P processes), a
    pure function of (source, config, step): see the module docstring.
    """
    tf = _tf()
    spe = steps_per_epoch(source, config)
    local = config.local(config.global_batch)
    epoch_fn = _folder_epoch if source.kind == "folder" else _tfds_epoch

    def augment(encoded, label, position):
        seed = tf.stack([tf.constant(config.seed, tf.int64), tf.cast(position, tf.int64)])
        return {"image": decode_train(encoded, seed, image_size=config.image_size,
                                      crop=config.train_crop,
                                      lighting_std=config.lighting_std), "label": label}

    step = start_step
    while step < num_steps:
        epoch, first = divmod(step, spe)
        ds = epoch_fn(tf, source, config, epoch, first, spe)
        ds = ds.map(augment, num_parallel_calls=config.workers or tf.data.AUTOTUNE,
                    deterministic=True)
        ds = ds.batch(local, drop_remainder=True).take(num_steps - step)
        ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options(tf, config.workers))
        for batch in ds.as_numpy_iterator():
            yield batch
            step += 1


def num_eval_batches(source: Source, config: StreamConfig) -> int:
    """Global evaluation batches: enough for the largest host share, padded."""
    n = source.num_eval
    if source.kind == "tfds":
        n = math.ceil(n / jax.process_count()) * jax.process_count()
    return math.ceil(n / config.eval_batch)


def eval_batches(source: Source, config: StreamConfig) -> Iterator[dict]:
    """This host's evaluation batches, every image exactly once over all hosts.

    Yields {'image': uint8 [E/P, S, S, 3], 'label': int32, 'mask': bool} numpy batches; padding
    examples (to whole batches, and to equal host shares) have mask False.
    """
    tf = _tf()
    local, p = config.local(config.eval_batch), jax.process_index()
    n_batches = num_eval_batches(source, config)
    if source.kind == "folder":
        n = source.num_eval
        index = np.arange(n_batches * config.eval_batch).reshape(n_batches, -1)
        index = index[:, p * local:(p + 1) * local].reshape(-1)
        mask = index < n
        index = np.where(mask, index, 0)  # padding re-reads image 0 and is masked out
        paths = tf.constant(source.eval.paths)
        labels = tf.constant(source.eval.labels)
        ds = tf.data.Dataset.from_tensor_slices((index, mask)).map(
            lambda i, m: (tf.io.read_file(paths[i]), labels[i], m),
            num_parallel_calls=config.workers or tf.data.AUTOTUNE, deterministic=True)
    else:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
        split = tfds.split_for_jax_process(source.eval, drop_remainder=False)
        ds = tfds.builder(source.name, data_dir=source.data_dir).as_dataset(
            split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
        ds = ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32), True))
        pad = ds.take(1).map(lambda e, y, m: (e, y, False)).repeat()
        ds = ds.concatenate(pad).take(n_batches * local)
    ds = ds.map(lambda e, y, m: {"image": decode_eval(e, image_size=config.image_size,
                                                     crop=config.eval_crop),
                                 "label": y, "mask": m},
                num_parallel_calls=config.workers or tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    yield from ds.with_options(_options(tf, config.workers)).as_numpy_iterator()


# ---------------------------------------------------------------------------------------------
# Host batches -> global device arrays.


def to_global(batch: dict, sharding) -> dict:
    """Host-local numpy batch -> global jax.Arrays split along the batch axis by `sharding`."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def prefetch_to_devices(batches: Iterator[dict], sharding, size: int = 2) -> Iterator[dict]:
    """Yields `to_global` batches, keeping `size` transfers in flight ahead of the consumer."""
    queue = collections.deque()
    for batch in batches:
        queue.append(to_global(batch, sharding))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


class ImageStream(streaming.StreamingDataset):
    """A Source with its StreamConfig as the shared loop's `streaming.StreamingDataset`.

    The loop's batch sizes replace the config's (`global_batch`, `eval_batch`).
    """

    def __init__(self, source: Source, config: StreamConfig):
        self.data, self.config = source, config
        self.num_classes = source.num_classes
        self.class_names = source.class_names
        self.source = f"{source.kind}:{source.name}"
        self.image_shape = (config.image_size, config.image_size, 3)

    def _config(self, batch_size: int, eval_batch: int | None = None) -> StreamConfig:
        return dataclasses.replace(self.config, global_batch=batch_size,
                                   eval_batch=eval_batch or self.config.eval_batch)

    def steps_per_epoch(self, batch_size: int) -> int:
        return steps_per_epoch(self.data, self._config(batch_size))

    def train_batches(self, *, batch_size, start_step, num_steps, sharding):
        return prefetch_to_devices(train_batches(self.data, self._config(batch_size),
                                                 start_step=start_step, num_steps=num_steps),
                                   sharding)

    def eval_batches(self, *, batch_size, sharding):
        config = self._config(self.config.global_batch, batch_size)
        return prefetch_to_devices(eval_batches(self.data, config), sharding)

    def identity(self) -> dict:
        c = self.config
        return {"source": self.source, "num_classes": self.num_classes,
                "num_train_examples": self.data.num_train, "num_test_examples": self.data.num_eval,
                "image_size": c.image_size, "train_crop": c.train_crop, "eval_crop": c.eval_crop,
                "lighting_std": c.lighting_std, "stream_seed": c.seed}
