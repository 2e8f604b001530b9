"""NTU RGB+D clips from a prepared store (`prepare`): a streamed `source.Source`.

Catalogue (`catalogue`): the store's STORE/<stem>.npy arrays (uint8 [T, H, W, 3], the shorter
side `short_side`) whose names parse (`names.parse`), split by the protocol. Before training
every video left out is named on one line: a name that is not NTU's, a video the prepare could
not decode (STORE/failed.json), one that cannot be read, or one shorter than a clip.

Training (`host_train_batches`): epoch e visits the training videos in the order
`epoch_order(n, seed, e)`; global batch t holds positions [t*B, (t+1)*B) and host p its p-th
slice (`stream.host_slice`). The clip of the example at global position i is drawn from the
stateless generator (seed, i): T consecutive frames from a uniform start, a uniform S x S crop
and a horizontal flip with probability 1/2. A batch is therefore a pure function of (seed, t),
for any number of hosts and devices, and a resumed run reads exactly what it would have read.
Clips are cut from memory-mapped arrays (only their frames are read) by `workers` threads.

Evaluation (`host_eval_batches`): every test video exactly once over all hosts
(`stream.eval_index`, padding masked), as V = clips x crops views [E, V, T, S, S, 3]: `eval_clips`
clips with evenly spaced starts (first to last frame) times `eval_crops` crops (1: the centre;
3: the start, centre and end of the longer side, the shorter side centred). The multiview
evaluator averages the logits over the views (video-level accuracy 'top1') and reports the
single views' accuracy ('view_top1', clip-level). Batches also carry 'video' (the test index).
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import sys
from typing import Iterator

import jax
import numpy as np

from experiments.common.data import stream
from experiments.common.data.source import DataError
from experiments.common.data.source import Source
from experiments.common.data.source import check_seed
from experiments.ntu import names
from experiments.ntu import prepare

# Kinetics mean and std of the reference (3D-ResNets-PyTorch main.py get_mean_std, value_scale 1)
MEAN = (0.4345, 0.4051, 0.3775)
STD = (0.2768, 0.2713, 0.2737)


@dataclasses.dataclass(frozen=True)
class Split:
    """The videos of one split, sorted by stem: paths, labels int32 [n], frame counts [n]."""

    paths: tuple
    labels: np.ndarray
    frames: np.ndarray

    def __len__(self):
        return len(self.paths)


@dataclasses.dataclass(frozen=True)
class Catalogue:
    store: str
    protocol: str
    settings: dict
    train: Split
    test: Split
    skipped: tuple  # (path, reason) of every video left out

    @property
    def num_classes(self) -> int:
        return names.NUM_ACTIONS[self.protocol]

    def digest(self) -> str:
        h = hashlib.sha1()
        for split in (self.train, self.test):
            for path, n in zip(split.paths, split.frames):
                h.update(f"{os.path.basename(path)}:{n};".encode())
        return h.hexdigest()[:16]


def catalogue(store: str, protocol: str, short_side: int, clip_frames: int, log=None) -> Catalogue:
    """The store's videos under `protocol`; each video left out is named by `log` (stderr of
    process 0 by default). Raises DataError when a split is empty or the settings differ."""
    if log is None:
        log = (
            (lambda line: print(line, file=sys.stderr))
            if jax.process_index() == 0
            else (lambda line: None)
        )
    if protocol not in names.PROTOCOLS:
        raise ValueError(
            f"config.data.protocol must be one of {', '.join(names.PROTOCOLS)}, got {protocol!r}."
        )
    if not store or not os.path.isdir(store):
        raise DataError(
            f"config.data.store {store!r} is not a directory: prepare one with "
            "python -m experiments.ntu.prepare --videos DIR --store STORE."
        )
    try:
        settings = prepare.check_settings(store, short_side, write=False)
    except (prepare.SettingsMismatchError, FileNotFoundError) as error:
        raise DataError(str(error)) from None
    skipped = []
    failed_path = os.path.join(store, prepare.FAILED)
    if os.path.exists(failed_path):
        with open(failed_path) as f:
            for path, reason in sorted(json.load(f).items()):
                skipped.append((path, f"not decoded by the prepare ({reason})"))
    found, frames = [], {}
    for f in sorted(os.listdir(store)):
        if not f.endswith(".npy"):
            continue
        path = os.path.join(store, f)
        name = names.parse(f)
        if name is None:
            skipped.append((path, "not an NTU RGB+D name"))
            continue
        try:
            shape = np.load(path, mmap_mode="r").shape
        except (OSError, ValueError) as error:
            skipped.append((path, f"unreadable ({error})"))
            continue
        if len(shape) != 4 or min(shape[1:3]) != short_side or shape[3] != 3:
            skipped.append((path, f"unexpected array shape {shape}"))
            continue
        if shape[0] < clip_frames:
            skipped.append((path, f"{shape[0]} frames, shorter than a clip of {clip_frames}"))
            continue
        found.append(name)
        frames[name.stem] = shape[0]
    for path, reason in skipped:
        log(f"left out {path}: {reason}")
    train, test = names.split(found, protocol)

    def make(split):
        return Split(
            tuple(os.path.join(store, n.stem + ".npy") for n in split),
            np.array([n.label for n in split], np.int32),
            np.array([frames[n.stem] for n in split], np.int64),
        )

    cat = Catalogue(store, protocol, settings, make(train), make(test), tuple(skipped))
    for what, split in (("training", cat.train), ("test", cat.test)):
        if not len(split):
            raise DataError(
                f"the store {store!r} holds no {what} video of protocol "
                f"{protocol!r} ({len(found)} usable videos)."
            )
    return cat


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The visiting order of `epoch`: a permutation drawn from (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 0x4E54]).permutation(n)


def train_clip(
    path: str, num_frames: int, seed: int, position: int, clip_frames: int, crop: int
) -> np.ndarray:
    """uint8 [T, S, S, 3]: the training clip of global position `position` (see module)."""
    video = np.load(path, mmap_mode="r")
    rng = np.random.default_rng([seed, position])
    start = rng.integers(0, num_frames - clip_frames + 1)
    top = rng.integers(0, video.shape[1] - crop + 1)
    left = rng.integers(0, video.shape[2] - crop + 1)
    clip = video[start : start + clip_frames, top : top + crop, left : left + crop]
    if rng.random() < 0.5:
        clip = clip[:, :, ::-1]
    return np.ascontiguousarray(clip)


def clip_starts(num_frames: int, clip_frames: int, clips: int) -> np.ndarray:
    """Evenly spaced starts of `clips` clips from the first to the last frame."""
    return np.round(np.linspace(0, num_frames - clip_frames, clips)).astype(np.int64)


def crop_offsets(height: int, width: int, crop: int, crops: int) -> list:
    """(top, left) of the evaluation crops: the centre, or the start, centre and end of the
    longer side (the shorter side centred)."""
    cy, cx = (height - crop) // 2, (width - crop) // 2
    if crops == 1:
        return [(cy, cx)]
    if width >= height:
        return [(cy, 0), (cy, cx), (cy, width - crop)]
    return [(0, cx), (cy, cx), (height - crop, cx)]


def eval_views(
    path: str, num_frames: int, clip_frames: int, crop: int, clips: int, crops: int
) -> np.ndarray:
    """uint8 [clips * crops, T, S, S, 3] of one test video (clip-major)."""
    video = np.load(path, mmap_mode="r")
    offsets = crop_offsets(video.shape[1], video.shape[2], crop, crops)
    return np.stack(
        [
            video[s : s + clip_frames, y : y + crop, x : x + crop]
            for s in clip_starts(num_frames, clip_frames, clips)
            for y, x in offsets
        ]
    )


def _ordered(jobs, fn, workers: int, ahead: int) -> Iterator:
    """fn(job) for each job in order, `ahead` jobs in flight on `workers` threads."""
    if workers <= 1:
        yield from map(fn, jobs)
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        queue = collections.deque()
        for job in jobs:
            queue.append(pool.submit(fn, job))
            if len(queue) > ahead:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()


@dataclasses.dataclass(frozen=True)
class VideoSource(Source):
    """Clips of a catalogue (see the module docstring).

    Attributes:
      catalogue: the videos.
      clip_frames: T.
      crop: S.
      eval_clips, eval_crops: the views of a test video.
      workers: threads cutting clips on each host.
    """

    catalogue: Catalogue
    clip_frames: int = 16
    crop: int = 112
    eval_clips: int = 4
    eval_crops: int = 3
    workers: int = 4

    @property
    def class_names(self):
        return tuple(f"A{a:03d}" for a in range(1, self.catalogue.num_classes + 1))

    @property
    def input_shape(self):
        return (self.clip_frames, self.crop, self.crop, 3)

    @property
    def num_views(self) -> int:
        return self.eval_clips * self.eval_crops

    def steps_per_epoch(self, batch_size: int) -> int:
        n = len(self.catalogue.train)
        if not 0 < batch_size <= n:
            raise ValueError(f"batch_size {batch_size} must be in [1, {n}] (the training videos).")
        return n // batch_size

    def host_train_batches(
        self, *, batch_size: int, start_step: int, num_steps: int, seed: int
    ) -> Iterator[dict]:
        """This host's numpy batches {'image': uint8 [B/P, T, S, S, 3], 'label': int32 [B/P]}
        of global steps [start_step, num_steps)."""
        spe = self.steps_per_epoch(batch_size)
        train = self.catalogue.train

        def jobs():
            step = start_step
            while step < num_steps:
                epoch, first = divmod(step, spe)
                order = epoch_order(len(train), seed, epoch)[: spe * batch_size]
                position = np.arange(spe * batch_size, dtype=np.int64) + epoch * spe * batch_size
                index = stream.host_slice(order, spe, batch_size)
                position = stream.host_slice(position, spe, batch_size)
                for row in range(first, min(spe, first + num_steps - step)):
                    yield index[row], position[row]
                step = (epoch + 1) * spe

        def batch(job):
            index, position = job
            clips = [self._train_clip(i, p, seed) for i, p in zip(index, position)]
            return {"image": np.stack(clips), "label": train.labels[index]}

        yield from _ordered(jobs(), batch, self.workers, 2 * max(self.workers, 1))

    def _train_clip(self, i, position, seed):
        train = self.catalogue.train
        try:
            return train_clip(
                train.paths[i],
                int(train.frames[i]),
                seed,
                int(position),
                self.clip_frames,
                self.crop,
            )
        except (OSError, ValueError) as error:
            raise DataError(
                f"cannot read {train.paths[i]!r} ({error}); prepare it again or delete it."
            ) from None

    def train_batches(self, *, batch_size, start_step, num_steps, mesh, seed):
        (seed,) = check_seed(seed, population=False)
        from experiments.common import parallel  # pylint: disable=import-outside-toplevel

        return stream.prefetch_to_devices(
            self.host_train_batches(
                batch_size=batch_size, start_step=start_step, num_steps=num_steps, seed=seed
            ),
            parallel.batch_sharded(mesh),
        )

    def host_eval_batches(self, batch_size: int) -> Iterator[dict]:
        """This host's numpy batches {'image': uint8 [E/P, V, T, S, S, 3], 'label', 'mask',
        'video' (the test index)}: every test video exactly once over all hosts."""
        test = self.catalogue.test
        index, mask = stream.eval_index(len(test), batch_size)

        def views(i):
            try:
                return eval_views(
                    test.paths[i],
                    int(test.frames[i]),
                    self.clip_frames,
                    self.crop,
                    self.eval_clips,
                    self.eval_crops,
                )
            except (OSError, ValueError) as error:
                raise DataError(
                    f"cannot read {test.paths[i]!r} ({error}); prepare it again or delete it."
                ) from None

        def batch(row):
            return {
                "image": np.stack([views(i) for i in index[row]]),
                "label": test.labels[index[row]],
                "mask": mask[row],
                "video": index[row].astype(np.int32),
            }

        yield from _ordered(range(len(index)), batch, self.workers, 2 * max(self.workers, 1))

    def eval_batches(self, split, *, batch_size, mesh):
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; this dataset has {self.splits}.")
        from experiments.common import parallel  # pylint: disable=import-outside-toplevel

        return stream.prefetch_to_devices(
            self.host_eval_batches(batch_size), parallel.batch_sharded(mesh)
        )

    def validate_batch(self, batch_size, eval_batch_size, mesh) -> None:
        self.steps_per_epoch(batch_size)
        del eval_batch_size, mesh

    def identity(self) -> dict:
        c = self.catalogue
        return {
            "source": "ntu-store",
            "protocol": c.protocol,
            "settings": c.settings,
            "num_train_examples": len(c.train),
            "num_test_examples": len(c.test),
            "videos_digest": c.digest(),
        }

    def info(self) -> dict:
        c = self.catalogue
        return {
            "dataset": f"ntu:{c.protocol}",
            "num_train_examples": len(c.train),
            "num_test_examples": len(c.test),
            "videos_left_out": len(c.skipped),
            "eval_views": self.num_views,
            "num_processes": jax.process_count(),
        }
