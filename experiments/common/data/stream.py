"""Streamed image data: tf.data decoding on every host, host shards, global arrays (`StreamSource`).

Catalogues: an image-folder tree (DIR/train/<class>/*, DIR/val/<class>/*; how many users keep
ImageNet) and TFDS builders (`imagenet2012`, `oxford_flowers102`, ...). Every host reads only its
own share, decodes and augments it in parallel tf.data workers (the idioms of the Flax ImageNet
example, google/flax examples/imagenet/input_pipeline.py, and of TFDS), and the batches become
globally sharded jax.Arrays (`jax.make_array_from_process_local_data`), prefetched to the devices.
An experiment brings only its decoders: `decode_train(encoded, seed) -> uint8 [S, S, 3]` and
`decode_eval(encoded) -> uint8 [S, S, 3]` (TensorFlow graph functions; `resize_decoders` and
`square_crop_decoders` here, ImageNet's random-resized crop in `experiments.imagenet`).

Determinism. Global train batch t (t = the global step) is a pure function of (seed, t):
- image folder: epoch e visits the images in the order `epoch_order(n, seed, e)`; global batch t
  is positions [b*B, (b+1)*B) of epoch t // steps_per_epoch with b = t % steps_per_epoch, and host
  p takes the p-th of its `process_count` equal slices (`host_slice`). The batches are therefore
  the same for any number of hosts and devices, and a run resumed at step t reads exactly what it
  would have read (the epoch's order is indexed directly, nothing is skipped over);
- TFDS: each host reads its `tfds.split_for_jax_process` share, files and examples shuffled with
  seeds derived from (seed, epoch); a resumed run skips the epoch's first examples (read, not
  decoded). The stream depends on the number of hosts, not on the number of devices.
The augmentation of the example at global position i = t*B + j uses the stateless seed (seed, i).
The last partial train batch of an epoch is dropped; evaluation pads to whole batches and masks
(every evaluation image is seen exactly once, `eval_index`).

A file that cannot be decoded is named: when a batch fails, its files are decoded one by one and
`DataError` names the first bad one.
"""

import collections
import dataclasses
import math
import os
from typing import Callable, Iterator

import jax
import numpy as np

from experiments.common import report
from experiments.common.data import folders
from experiments.common.data.source import DataError
from experiments.common.data.source import Source
from experiments.common.data.source import check_seed

TFDS_SPLITS = {"imagenet2012": ("train", "validation"), "oxford_flowers102": ("train", "test")}
# The centre crop of the shorter side before resizing to S: resize 256, centre crop 224.
EVAL_CROP_FRACTION = 224 / 256


class MissingDataError(DataError):
    """The data a run needs is not where it was looked for; the message says where to put it."""


def tf():
    """TensorFlow for tf.data, kept off the accelerators (`report.tensorflow_off_accelerators`)."""
    return report.tensorflow_off_accelerators()


# ---------------------------------------------------------------------------------------------
# Catalogues: which files (or TFDS splits) hold which labels.


@dataclasses.dataclass(frozen=True)
class FolderSplit:
    """The files of one split of an image folder, sorted by (class, file name)."""

    paths: tuple
    labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """Where the images come from.

    Attributes:
      kind: 'folder' or 'tfds'.
      name: dataset name ('folder', 'identities' or the TFDS name).
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


def folder_catalogue(data_dir: str, eval_split: str = "val") -> Catalogue:
    """An image folder: DATA_DIR/train/<class>/* and DATA_DIR/<eval_split>/<class>/*.

    Classes are the train sub-folders in sorted order (ImageNet's wnids sort into the usual label
    order; `folders.list_classes`). Raises MissingDataError naming what is missing.
    """
    if not data_dir or not os.path.isdir(data_dir):
        raise MissingDataError(f"--config.data.data_dir {data_dir!r} is not a directory.")
    layout = "expected DIR/train/<class>/*.JPEG and DIR/val/<class>/*"
    train = folders.list_classes(os.path.join(data_dir, "train"), layout=layout)
    evaluation = folders.list_classes(
        os.path.join(data_dir, eval_split), layout=layout, class_names=tuple(train)
    )
    split = lambda listing: FolderSplit(  # noqa: E731
        tuple(p for paths in listing.values() for p in paths),
        np.asarray([k for k, paths in enumerate(listing.values()) for _ in paths], np.int32),
    )
    train_split, eval_split_files = split(train), split(evaluation)
    return Catalogue(
        "folder",
        "folder",
        tuple(train),
        len(train_split.labels),
        len(eval_split_files.labels),
        train_split,
        eval_split_files,
        data_dir,
    )


def tfds_catalogue(name: str, data_dir: str | None = None, *, prepare: bool = True) -> Catalogue:
    """A TFDS dataset (train and evaluation splits of `TFDS_SPLITS`), checked before any work.

    imagenet2012 needs the manual download: when it is not prepared and ILSVRC2012_img_train.tar
    or ILSVRC2012_img_val.tar is missing from the builder's manual directory, MissingDataError
    says where to put them. A dataset that is not prepared otherwise is downloaded and prepared
    (needs network access) by process 0 when `prepare` (False under `tfds.testing.mock_data`).
    """
    if name not in TFDS_SPLITS:
        raise ValueError(f"unknown TFDS dataset {name!r}; choose one of {tuple(TFDS_SPLITS)}.")
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    tf()
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
                    f"ILSVRC2012) in {manual!r} (or pass --config.data.data_dir DIR to read "
                    "them from DIR/downloads/manual), then run again; preparing takes a few "
                    "hours once. An image-folder copy (DIR/train/<wnid>/*.JPEG, "
                    "DIR/val/<wnid>/*.JPEG) works too with --config.data.dataset=folder."
                )
        if prepare and jax.process_index() == 0:
            builder.download_and_prepare()
    names = tuple(builder.info.features["label"].names)
    return Catalogue(
        "tfds",
        name,
        names,
        _num_examples(builder, train_split),
        _num_examples(builder, eval_split),
        train_split,
        eval_split,
        data_dir,
    )


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


# ---------------------------------------------------------------------------------------------
# Decoding helpers (TensorFlow graph functions, run in tf.data's parallel map).


def image_shape(encoded):
    """[height, width] of an encoded JPEG (header only) or PNG/other (decoded)."""
    t = tf()
    return t.cond(
        t.io.is_jpeg(encoded),
        lambda: t.image.extract_jpeg_shape(encoded)[:2],
        lambda: t.shape(t.io.decode_image(encoded, channels=3, expand_animations=False))[:2],
    )


def decode_crop(encoded, window):
    """RGB uint8 crop [h, w, 3] of window (top, left, h, w); grayscale and CMYK become RGB."""
    t = tf()

    def other():
        image = t.io.decode_image(encoded, channels=3, expand_animations=False)
        return t.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])

    image = t.cond(
        t.io.is_jpeg(encoded),
        lambda: t.image.decode_and_crop_jpeg(encoded, window, channels=3),
        other,
    )
    image.set_shape([None, None, 3])
    return image


def decode_whole(encoded):
    """The whole image, RGB uint8 [h, w, 3]."""
    t = tf()
    return decode_crop(encoded, t.concat([[0, 0], image_shape(encoded)], 0))


def centre_window(shape, fraction: float):
    """(top, left, size, size) of the centre square of `fraction` of the shorter side."""
    t = tf()
    short = t.cast(t.reduce_min(shape), t.float32)
    size = t.maximum(t.cast(t.round(fraction * short), t.int32), 1)
    return t.stack([(shape[0] - size + 1) // 2, (shape[1] - size + 1) // 2, size, size])


def resize_uint8(image, size: int):
    """Bilinear resize to size x size, rounded back to uint8."""
    t = tf()
    image = t.image.resize(image, [size, size], method="bilinear")
    return t.cast(t.clip_by_value(t.round(image), 0.0, 255.0), t.uint8)


def square_size(image_size: int) -> int:
    """R = round(S * 256 / 224): the resize before a centre or random crop of S."""
    return round(image_size / EVAL_CROP_FRACTION)


def resize_decoders(image_size: int) -> tuple:
    """(decode_train, decode_eval): the whole image resized to S x S; training adds a random
    horizontal flip (aligned faces: insightface arcface_torch's flip-only augmentation)."""

    def decode_train(encoded, seed):
        t = tf()
        image = resize_uint8(decode_whole(encoded), image_size)
        return t.image.stateless_random_flip_left_right(
            image, t.random.experimental.stateless_split(seed, 4)[1]
        )

    return decode_train, lambda encoded: resize_uint8(decode_whole(encoded), image_size)


def square_crop_decoders(image_size: int) -> tuple:
    """(decode_train, decode_eval): the image resized to R x R (R = S*256/224, aspect not kept);
    training takes a random S x S crop and a random flip, evaluation the centre S x S (the OLS
    fine-grained recipe, zhangchbin/OnlineLabelSmoothing fine-grained/main.py)."""
    r = square_size(image_size)

    def decode_train(encoded, seed):
        t = tf()
        seeds = t.random.experimental.stateless_split(seed, 4)
        image = resize_uint8(decode_whole(encoded), r)
        image = t.image.stateless_random_crop(image, [image_size, image_size, 3], seeds[3])
        return t.image.stateless_random_flip_left_right(image, seeds[1])

    def decode_eval(encoded):
        image = resize_uint8(decode_whole(encoded), r)
        return tf().image.crop_to_bounding_box(
            image, (r - image_size) // 2, (r - image_size) // 2, image_size, image_size
        )

    return decode_train, decode_eval


# ---------------------------------------------------------------------------------------------
# Which examples each host reads: pure functions of (seed, step).


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """int32 [n]: the visiting order of `epoch`, argsort of TF's stateless_uniform(seed, epoch)."""
    t = tf()
    keys = t.random.stateless_uniform([num_examples], seed=t.constant([seed, epoch], t.int64))
    return t.argsort(keys, stable=True).numpy()


def local_batch(batch: int) -> int:
    """This host's share of a global batch (which must split over the processes)."""
    count = jax.process_count()
    if batch % count:
        raise ValueError(f"batch {batch} must be a multiple of the {count} processes.")
    return batch // count


def host_slice(a: np.ndarray, steps: int, batch: int) -> np.ndarray:
    """[steps * batch] -> this host's [steps, batch / P] part of every global batch."""
    local, p = local_batch(batch), jax.process_index()
    return a.reshape(steps, batch)[:, p * local : (p + 1) * local]


def train_index(
    num_examples: int,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    first_step: int,
    steps_per_epoch: int,
) -> tuple:
    """(indices, global positions) of this host's examples of `epoch` from step `first_step` on,
    each int64 [steps, B / P]."""
    order = epoch_order(num_examples, seed, epoch)[: steps_per_epoch * batch_size]
    position = np.arange(steps_per_epoch * batch_size, dtype=np.int64) + (
        epoch * steps_per_epoch * batch_size
    )
    pick = lambda a: host_slice(a, steps_per_epoch, batch_size)[first_step:]  # noqa: E731
    return pick(order.astype(np.int64)), pick(position)


def eval_index(num_examples: int, batch_size: int) -> tuple:
    """(indices, mask) of this host's evaluation examples, each [n_batches, E / P]: every
    example exactly once over all hosts; padding re-reads example 0 with mask False."""
    n_batches = math.ceil(num_examples / batch_size)
    index = host_slice(np.arange(n_batches * batch_size), n_batches, batch_size)
    mask = index < num_examples
    return np.where(mask, index, 0), mask


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


# ---------------------------------------------------------------------------------------------
# tf.data streams of host-local numpy batches.


def _options(workers: int):
    t = tf()
    options = t.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = workers or 0
    return options


def _parallel(workers: int):
    return workers or tf().data.AUTOTUNE


def first_undecodable(paths, decode: Callable) -> str | None:
    """The first of `paths` that `decode(encoded)` fails on (eagerly, one by one), or None."""
    t = tf()
    for path in paths:
        try:
            decode(t.io.read_file(path))
        except (t.errors.InvalidArgumentError, t.errors.NotFoundError):
            return path
    return None


@dataclasses.dataclass(frozen=True)
class StreamSource(Source):
    """A catalogue streamed through tf.data with an experiment's decoders (`source.Source`).

    Attributes:
      catalogue: the files or TFDS splits.
      decode_train: `decode_train(encoded, seed int64 [2]) -> uint8 [S, S, 3]`.
      decode_eval: `decode_eval(encoded) -> uint8 [S, S, 3]`.
      image_size: S.
      workers: parallel decode calls per host (0: tf.data autotune).
      shuffle_buffer: TFDS example shuffle buffer (a folder's order is a full permutation).
    """

    catalogue: Catalogue
    decode_train: Callable
    decode_eval: Callable
    image_size: int
    workers: int = 0
    shuffle_buffer: int = 16 * 1024

    @property
    def class_names(self):
        return self.catalogue.class_names

    @property
    def input_shape(self):
        return (self.image_size, self.image_size, 3)

    def steps_per_epoch(self, batch_size: int) -> int:
        n = self.catalogue.num_train
        if self.catalogue.kind == "tfds":  # each host's share, equal sizes (drop_remainder)
            n = n // jax.process_count() * jax.process_count()
        if not 0 < batch_size <= n:
            raise ValueError(f"batch_size {batch_size} must be in [1, {n}] (the training images).")
        return n // batch_size

    def _folder_epoch(self, batch_size, seed, epoch, first_step, spe):
        t = tf()
        index, position = train_index(
            self.catalogue.num_train,
            batch_size=batch_size,
            seed=seed,
            epoch=epoch,
            first_step=first_step,
            steps_per_epoch=spe,
        )
        paths = t.constant(self.catalogue.train.paths)
        labels = t.constant(self.catalogue.train.labels)
        ds = t.data.Dataset.from_tensor_slices((index.reshape(-1), position.reshape(-1)))
        return ds.map(
            lambda i, pos: (t.io.read_file(paths[i]), labels[i], pos),
            num_parallel_calls=_parallel(self.workers),
            deterministic=True,
        ), index

    def _tfds_epoch(self, batch_size, seed, epoch, first_step, spe):
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

        t = tf()
        local, p = local_batch(batch_size), jax.process_index()
        split = tfds.split_for_jax_process(self.catalogue.train, drop_remainder=True)
        epoch_seed = (seed * 1_000_003 + epoch) % (2**31 - 1)
        read = tfds.ReadConfig(
            shuffle_seed=epoch_seed, interleave_cycle_length=16, options=_options(self.workers)
        )
        ds = tfds.builder(self.catalogue.name, data_dir=self.catalogue.data_dir).as_dataset(
            split=split,
            shuffle_files=True,
            read_config=read,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
        ds = ds.shuffle(self.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
        ds = ds.take(spe * local).skip(first_step * local)
        # Global position of this host's j-th example in step t: t*B + p*local + j % local.
        base = epoch * spe * batch_size + p * local
        return ds.enumerate(first_step * local).map(
            lambda k, ex: (
                ex["image"],
                t.cast(ex["label"], t.int32),
                base + (k // local) * batch_size + k % local,
            )
        ), None

    def host_train_batches(
        self, *, batch_size: int, start_step: int, num_steps: int, seed: int
    ) -> Iterator[dict]:
        """This host's numpy batches {'image': uint8 [B/P, S, S, 3], 'label': int32 [B/P]} of
        global steps [start_step, num_steps)."""
        t = tf()
        spe = self.steps_per_epoch(batch_size)
        local = local_batch(batch_size)

        def augment(encoded, label, position):
            key = t.stack([t.constant(seed, t.int64), t.cast(position, t.int64)])
            return {"image": self.decode_train(encoded, key), "label": label}

        step = start_step
        while step < num_steps:
            epoch, first = divmod(step, spe)
            epoch_fn = self._folder_epoch if self.catalogue.kind == "folder" else self._tfds_epoch
            ds, index = epoch_fn(batch_size, seed, epoch, first, spe)
            ds = ds.map(augment, num_parallel_calls=_parallel(self.workers), deterministic=True)
            ds = ds.batch(local, drop_remainder=True).take(num_steps - step)
            ds = ds.prefetch(t.data.AUTOTUNE).with_options(_options(self.workers))
            iterator = iter(ds.as_numpy_iterator())
            while step < num_steps and step < (epoch + 1) * spe:
                try:
                    batch = next(iterator)
                except StopIteration:
                    break
                except t.errors.InvalidArgumentError as error:
                    raise self._bad_batch(index, step - epoch * spe - first, error) from None
                yield batch
                step += 1

    def _bad_batch(self, index, row: int, error) -> DataError:
        """A DataError naming the file of the failed batch that cannot be decoded."""
        if index is not None:
            paths = [self.catalogue.train.paths[i] for i in index[row]]
            bad = first_undecodable(
                paths, lambda e: self.decode_train(e, tf().constant([0, 0], tf().int64))
            )
            if bad is not None:
                return DataError(
                    f"cannot decode {bad!r} (a training image of step "
                    f"{row}); replace or delete that file and run again."
                )
        what = " ".join(str(error).split())[:300]
        return DataError(f"a training batch could not be decoded ({what}).")

    def train_batches(self, *, batch_size, start_step, num_steps, mesh, seed):
        (seed,) = check_seed(seed, population=False)
        from experiments.common import parallel  # pylint: disable=import-outside-toplevel

        return prefetch_to_devices(
            self.host_train_batches(
                batch_size=batch_size, start_step=start_step, num_steps=num_steps, seed=seed
            ),
            parallel.batch_sharded(mesh),
        )

    def host_eval_batches(self, batch_size: int) -> Iterator[dict]:
        """This host's numpy evaluation batches {'image', 'label', 'mask'}."""
        t = tf()
        local = local_batch(batch_size)
        c = self.catalogue
        if c.kind == "folder":
            index, mask = eval_index(c.num_eval, batch_size)
            paths, labels = t.constant(c.eval.paths), t.constant(c.eval.labels)
            ds = t.data.Dataset.from_tensor_slices((index.reshape(-1), mask.reshape(-1))).map(
                lambda i, m: (t.io.read_file(paths[i]), labels[i], m),
                num_parallel_calls=_parallel(self.workers),
                deterministic=True,
            )
        else:
            import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

            n_batches = math.ceil(
                math.ceil(c.num_eval / jax.process_count()) * jax.process_count() / batch_size
            )
            split = tfds.split_for_jax_process(c.eval, drop_remainder=False)
            ds = tfds.builder(c.name, data_dir=c.data_dir).as_dataset(
                split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
            )
            ds = ds.map(lambda ex: (ex["image"], t.cast(ex["label"], t.int32), True))
            pad = ds.take(1).map(lambda e, y, m: (e, y, False)).repeat()
            ds = ds.concatenate(pad).take(n_batches * local)
        ds = ds.map(
            lambda e, y, m: {"image": self.decode_eval(e), "label": y, "mask": m},
            num_parallel_calls=_parallel(self.workers),
            deterministic=True,
        )
        ds = ds.batch(local, drop_remainder=True).prefetch(t.data.AUTOTUNE)
        try:
            yield from ds.with_options(_options(self.workers)).as_numpy_iterator()
        except t.errors.InvalidArgumentError as error:
            bad = first_undecodable(c.eval.paths, self.decode_eval) if c.kind == "folder" else None
            raise DataError(
                f"cannot decode {bad!r} (an evaluation image); replace or delete "
                "that file and run again."
                if bad
                else f"an evaluation batch could not be decoded ({error})."
            ) from None

    def eval_batches(self, split, *, batch_size, mesh):
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; this dataset has {self.splits}.")
        from experiments.common import parallel  # pylint: disable=import-outside-toplevel

        return prefetch_to_devices(self.host_eval_batches(batch_size), parallel.batch_sharded(mesh))

    def identity(self) -> dict:
        c = self.catalogue
        return {
            "source": f"{c.kind}:{c.name}",
            "num_classes": c.num_classes,
            "num_train_examples": c.num_train,
            "num_test_examples": c.num_eval,
        }

    def info(self) -> dict:
        c = self.catalogue
        return {
            "dataset": c.name,
            "num_train_examples": c.num_train,
            "num_test_examples": c.num_eval,
            "num_processes": jax.process_count(),
        }
