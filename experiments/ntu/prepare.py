r"""Decode NTU RGB+D videos once into a compact store of uint8 frame arrays.

    python -m experiments.ntu.prepare --videos nturgb+d_rgb/ --store ntu_store/ \
        [--short_side 128] [--workers 8]

Every `SsssCcccPpppRrrrAaaa_rgb.avi` under --videos (searched recursively) is decoded with PyAV,
each frame resized so that its shorter side is --short_side (bilinear, aspect kept), and saved as
STORE/<stem>.npy, uint8 [T, H, W, 3] (read later with np.load(mmap_mode='r'), so a training clip
touches only its own frames). A 1920x1080 NTU video of ~100 frames at short side 128 takes about
100 * 128 * 228 * 3 = 8.8 MB.

- Atomic per video: written to STORE/.tmp/<stem>.<pid>.npy, then renamed; a killed prepare
  leaves no half-written array, and running it again (one prepare per store at a time) clears
  STORE/.tmp and decodes only what is missing (resumable).
- STORE/settings.json holds the settings (short side, format); a prepare or training run with
  other settings refuses, naming both.
- STORE/failed.json lists the videos that could not be decoded (each also named on the console);
  a later prepare retries them. Files whose names are not NTU names are named and skipped.
- Several worker processes (--workers, default: the CPU count) with a tqdm progress bar.
"""

import argparse
import json
import multiprocessing
import os
import sys
import tempfile

import numpy as np
from tqdm import tqdm

from experiments.ntu import names

FORMAT = "ntu-npy-v1"
SETTINGS = "settings.json"
FAILED = "failed.json"
DEFAULT_SHORT_SIDE = 128


class SettingsMismatchError(ValueError):
    """The store was prepared with other settings."""


def settings(short_side: int) -> dict:
    return {"format": FORMAT, "short_side": int(short_side)}


def check_settings(store: str, short_side: int, *, write: bool) -> dict:
    """The store's settings, refusing (SettingsMismatchError) when they differ from the asked
    ones; a new store gets them written when `write`."""
    wanted = settings(short_side)
    path = os.path.join(store, SETTINGS)
    if os.path.exists(path):
        with open(path) as f:
            found = json.load(f)
        if found != wanted:
            raise SettingsMismatchError(
                f"the store {store!r} was prepared with {found}, not {wanted}: use "
                f"--short_side {found.get('short_side')} (or config.data.short_side="
                f"{found.get('short_side')} for training), or prepare another --store."
            )
        return found
    if not write:
        raise FileNotFoundError(
            f"{store!r} is no prepared store (no {SETTINGS}): run python -m "
            f"experiments.ntu.prepare --videos DIR --store {store} first."
        )
    os.makedirs(store, exist_ok=True)
    _atomic_json(path, wanted)
    return wanted


def _atomic_json(path: str, value) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".json.tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def resized_size(height: int, width: int, short_side: int) -> tuple:
    """(h, w) with the shorter side `short_side`, aspect kept (rounded)."""
    if height <= width:
        return short_side, max(1, round(width * short_side / height))
    return max(1, round(height * short_side / width)), short_side


def decode(path: str, short_side: int) -> np.ndarray:
    """uint8 [T, H, W, 3] of every frame, the shorter side resized to `short_side` (PyAV;
    bilinear in libswscale). Raises on an unreadable file or one without frames."""
    import av  # pylint: disable=import-outside-toplevel

    frames = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            h, w = resized_size(frame.height, frame.width, short_side)
            frames.append(
                frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="BILINEAR")
            )
    if not frames:
        raise ValueError("no frames decoded")
    return np.stack(frames)


def list_videos(videos: str) -> tuple:
    """({stem: path} of the NTU-named videos under `videos`, [paths with other names])."""
    found, other = {}, []
    for root, _, files in os.walk(videos):
        for f in sorted(files):
            path = os.path.join(root, f)
            if not f.lower().endswith(".avi"):
                continue
            name = names.parse(f)
            if name is None:
                other.append(path)
            else:
                found[name.stem] = path
    return dict(sorted(found.items())), sorted(other)


def _work(args):
    stem, path, store, short_side = args
    try:
        frames = decode(path, short_side)
    except Exception as error:  # pylint: disable=broad-except  # any decoder failure
        return stem, path, f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
    tmp = os.path.join(store, ".tmp", f"{stem}.{os.getpid()}.npy")
    np.save(tmp, frames)
    os.replace(tmp, os.path.join(store, f"{stem}.npy"))
    return stem, path, None


def prepare(
    videos: str,
    store: str,
    short_side: int = DEFAULT_SHORT_SIDE,
    workers: int | None = None,
    progress: bool = True,
    log=None,
) -> dict:
    """Decodes every video of `videos` not yet in `store`; returns {'done', 'skipped',
    'failed': {path: reason}, 'other': [paths]}. See the module docstring."""
    log = log or (lambda line: print(line, file=sys.stderr))
    if not os.path.isdir(videos):
        raise FileNotFoundError(f"--videos {videos!r} is not a directory.")
    check_settings(store, short_side, write=True)
    tmp_dir = os.path.join(store, ".tmp")
    os.makedirs(tmp_dir, exist_ok=True)
    for f in os.listdir(tmp_dir):  # left by a killed prepare (one prepare per store at a time)
        os.remove(os.path.join(tmp_dir, f))
    found, other = list_videos(videos)
    for path in other:
        log(f"skipped {path}: not an NTU RGB+D name (SsssCcccPpppRrrrAaaa_rgb.avi)")
    todo = [
        (stem, path, store, short_side)
        for stem, path in found.items()
        if not os.path.exists(os.path.join(store, f"{stem}.npy"))
    ]
    failed = {}
    workers = workers or os.cpu_count() or 1
    with tqdm(
        total=len(todo),
        desc="decoding videos",
        unit="video",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:
        if workers == 1 or len(todo) <= 1:
            results = map(_work, todo)
            pool = None
        else:
            pool = multiprocessing.get_context("spawn").Pool(min(workers, len(todo)))
            results = pool.imap_unordered(_work, todo)
        try:
            for stem, path, error in results:
                if error:
                    failed[path] = error
                    bar.write(f"cannot decode {path}: {error}", file=sys.stderr)
                bar.update()
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    _atomic_json(os.path.join(store, FAILED), failed)
    return {
        "done": len(todo) - len(failed),
        "skipped": len(found) - len(todo),
        "failed": failed,
        "other": other,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", required=True, help="folder of *_rgb.avi (recursive)")
    parser.add_argument("--store", required=True, help="the store folder to write")
    parser.add_argument("--short_side", type=int, default=DEFAULT_SHORT_SIDE)
    parser.add_argument("--workers", type=int, default=0, help="processes (0: CPU count)")
    args = parser.parse_args(argv)
    try:
        out = prepare(args.videos, args.store, args.short_side, args.workers or None)
    except (SettingsMismatchError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{out['done']} videos decoded, {out['skipped']} already in the store, "
        f"{len(out['failed'])} failed, {len(out['other'])} other names skipped; "
        f"store: {args.store}"
    )
    return 1 if out["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
