"""The standard face-verification protocol: pair sets, flip-test embeddings, 10-fold accuracy, TAR@FAR.

A verification set is P pairs of face images with a same/different label per pair (LFW, Huang et
al. 2007, "Labeled Faces in the Wild: A Database for Studying Face Recognition in Unconstrained
Environments"; CALFW, CPLFW, CFP-FF, CFP-FP and AgeDB-30 follow the same protocol). A model maps
each image to an embedding; a pair is predicted "same" when the squared L2 distance of its two
L2-normalised embeddings is below a threshold. This module implements the protocol used to report
ArcFace (Deng et al. 2019, "ArcFace: Additive Angular Margin Loss for Deep Face Recognition") and
the GSC paper's Table 5, as in the evaluation code of the insightface repository
(github.com/deepinsight/insightface, recognition/arcface_torch/eval/verification.py):

    vset = load_bin("lfw.bin")                                   # or load_pairs(pairs.txt, root)
    emb = embed_pairs(embed_fn, vset.images, batch_size=256)     # flip test, [2P, D]
    result = evaluate(emb, vset.issame)                          # 10-fold accuracy, TAR@FAR, ROC
    plot_roc({"lfw": result}, "roc.png")

Data sources:
  * `load_bin` reads insightface's validation `.bin` files (a pickle of the encoded images and the
    pair labels), with an unpickler that refuses everything but byte strings and numpy arrays.
  * `load_pairs` reads an image folder with an LFW-style `pairs.txt`.
  * `write_bin` writes the `.bin` format; `sample_pairs` draws balanced pairs from identity labels
    (`python -m experiments.face.make_bin` builds a `.bin` from an identity folder).

Everything here is NumPy, Pillow and matplotlib; the model is the caller's `embed_fn`.
"""

import dataclasses
import io
import os
import pathlib
import pickle
import tempfile
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

#: insightface's threshold grid for the squared distance of unit vectors, which lies in [0, 4].
THRESHOLDS = np.arange(0, 4, 0.01)
#: Sets at least this long get a progress bar while decoding.
PROGRESS_MIN_IMAGES = 1000


@dataclasses.dataclass(frozen=True)
class VerificationSet:
    """P image pairs with a same/different label each.

    Attributes:
      name: the set's name (e.g. "lfw").
      images: uint8 [2P, S, S, 3], RGB; pair p is (images[2p], images[2p + 1]).
      issame: bool [P]; True when the two images of the pair show the same identity.
    """
    name: str
    images: np.ndarray
    issame: np.ndarray

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str, got {type(self.name).__name__}.")
        images, issame = self.images, self.issame
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise ValueError(f"images must be a uint8 numpy array, got "
                             f"{getattr(images, 'dtype', type(images).__name__)}.")
        if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[3] != 3:
            raise ValueError(f"images must have shape [2P, S, S, 3], got {images.shape}.")
        if not isinstance(issame, np.ndarray) or issame.dtype != bool or issame.ndim != 1:
            raise ValueError(f"issame must be a 1-D bool numpy array, got "
                             f"{getattr(issame, 'dtype', type(issame).__name__)} of shape "
                             f"{getattr(issame, 'shape', None)}.")
        if issame.shape[0] == 0:
            raise ValueError("a verification set needs at least one pair, got issame of length 0.")
        if images.shape[0] != 2 * issame.shape[0]:
            raise ValueError(f"images must hold two images per pair: {issame.shape[0]} pairs need "
                             f"{2 * issame.shape[0]} images, got {images.shape[0]}.")

    @property
    def num_pairs(self) -> int:
        return int(self.issame.shape[0])


# ---------------------------------------------------------------------------------------------
# Reading and writing insightface's .bin files.

# The globals a validation .bin may reference: numpy array / scalar reconstruction (numpy 1 wrote
# numpy.core, numpy 2 writes numpy._core; protocol 5 writes arrays with _frombuffer) and the
# byte-string constructors of Python 2 and of pickle protocols < 3 (which write bytes as
# _codecs.encode(str, 'latin1')).
_ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "bytes"),
    ("builtins", "bytearray"),
    ("__builtin__", "bytes"),
    ("__builtin__", "bytearray"),
    ("_codecs", "encode"),
})


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only builds byte strings, bools, lists, tuples and numpy arrays.

    A pickle can call any importable function while it is read; a file from the internet must
    therefore not be read with `pickle.load`. Every global outside `_ALLOWED_GLOBALS` raises
    `pickle.UnpicklingError` before anything is called.
    """

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: a verification .bin may only hold byte strings, "
                "bools and numpy arrays.")
        return super().find_class(module, name)


def _as_bytes(item) -> bytes | None:
    """The bytes of one encoded image as a .bin stores it, or None for anything else."""
    if isinstance(item, (bytes, bytearray, np.bytes_)):
        return bytes(item)
    if isinstance(item, np.ndarray):
        if item.dtype in (np.uint8, np.int8) and item.ndim == 1:
            return item.tobytes()
        if item.dtype.kind == "S" and item.size == 1:
            return bytes(item.reshape(()).item())
    return None


def _describe(obj) -> str:
    if isinstance(obj, np.ndarray):
        return f"numpy array {obj.dtype} {obj.shape}"
    if isinstance(obj, (list, tuple)):
        return f"{type(obj).__name__} of length {len(obj)}"
    return type(obj).__name__


def _check_bin_structure(obj, path) -> tuple[list[bytes], np.ndarray]:
    where = f"{path}: expected a pickled (images, issame) pair"
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ValueError(f"{where}, found {_describe(obj)}.")
    bins, issame_list = obj
    if not isinstance(bins, (list, tuple, np.ndarray)):
        raise ValueError(f"{where}; images must be a sequence of byte strings, found "
                         f"{_describe(bins)}.")
    if isinstance(issame_list, np.ndarray):
        if issame_list.dtype != bool or issame_list.ndim != 1:
            raise ValueError(f"{where}; issame must be a sequence of bools, found "
                             f"{_describe(issame_list)}.")
        issame = issame_list.copy()
    elif isinstance(issame_list, (list, tuple)):
        bad = [i for i, x in enumerate(issame_list) if not isinstance(x, (bool, np.bool_))]
        if bad:
            raise ValueError(f"{where}; issame must be a sequence of bools, found "
                             f"{type(issame_list[bad[0]]).__name__} at index {bad[0]}.")
        issame = np.asarray(issame_list, dtype=bool).reshape(-1)
    else:
        raise ValueError(f"{where}; issame must be a sequence of bools, found "
                         f"{_describe(issame_list)}.")
    if len(issame) == 0:
        raise ValueError(f"{path}: the file holds no pairs (issame is empty).")
    if len(bins) != 2 * len(issame):
        raise ValueError(f"{path}: {len(issame)} pairs need {2 * len(issame)} images, the file "
                         f"holds {len(bins)}.")
    encoded = []
    for i, item in enumerate(bins):
        data = _as_bytes(item)
        if data is None:
            raise ValueError(f"{where}; image {i} must be a byte string, found {_describe(item)}.")
        encoded.append(data)
    return encoded, issame


def _decode(data: bytes, image_size: int, where: str) -> np.ndarray:
    """uint8 [S, S, 3]: one encoded image, RGB, bilinearly resized to S x S when it differs."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{where}: cannot decode the image ({e}).") from e


def _decode_all(encoded: Sequence[bytes], image_size: int, name: str, wheres: Sequence[str],
                progress: bool) -> np.ndarray:
    images = np.empty((len(encoded), image_size, image_size, 3), np.uint8)
    show = progress and len(encoded) >= PROGRESS_MIN_IMAGES
    for i, data in enumerate(tqdm(encoded, desc=f"decoding {name}", unit="img",
                                  disable=not show, leave=False)):
        images[i] = _decode(data, image_size, wheres[i])
    return images


def _check_image_size(image_size) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
            or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}.")


def read_bin(path) -> tuple[list[bytes], np.ndarray]:
    """The encoded images and the bool [P] pair labels of an insightface .bin, without decoding.

    The file is a pickle of `(bins, issame_list)`: `bins` holds 2P encoded images (JPEG or PNG;
    `bytes`, or numpy byte arrays / `np.bytes_` in files written from Python 2), `issame_list` P
    bools. It is read with a restricted unpickler (`pickle.UnpicklingError` for any global other
    than numpy array reconstruction and byte-string constructors) and `encoding='bytes'` (Python 2
    strings are bytes).

    Raises:
      FileNotFoundError: no such file.
      pickle.UnpicklingError: the pickle references a refused global, or is not a pickle.
      ValueError: the structure is not (2P byte strings, P bools).
    """
    path = pathlib.Path(path)
    with open(path, "rb") as f:
        try:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
        except pickle.UnpicklingError:
            raise
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
            raise pickle.UnpicklingError(f"{path}: not a readable pickle ({e!r}).") from e
    return _check_bin_structure(obj, path)


def load_bin(path, *, image_size: int = 112, name: str | None = None,
             progress: bool = True) -> VerificationSet:
    """Reads an insightface validation .bin (lfw.bin, cfp_fp.bin, agedb_30.bin, calfw.bin, ...).

    Args:
      path: the .bin file (format: `read_bin`).
      image_size: S; images whose size is not S x S are bilinearly resized (the published files
        hold aligned 112 x 112 crops).
      name: the set's name; default the file name without its suffix ("lfw").
      progress: show a progress bar while decoding sets of `PROGRESS_MIN_IMAGES` or more images.

    Returns:
      A `VerificationSet` with uint8 RGB images [2P, S, S, 3].

    Raises:
      pickle.UnpicklingError, ValueError: see `read_bin`; ValueError also for an image that
        does not decode, naming the file and its index.
    """
    _check_image_size(image_size)
    path = pathlib.Path(path)
    encoded, issame = read_bin(path)
    name = path.stem if name is None else name
    wheres = [f"{path}: image {i}" for i in range(len(encoded))]
    images = _decode_all(encoded, int(image_size), name, wheres, progress)
    return VerificationSet(name=name, images=images, issame=issame)


def write_bin(path, encoded_images: Sequence, issame: Sequence) -> None:
    """Writes an insightface validation .bin: a pickle of `(list of bytes, list of bools)`.

    Args:
      path: the output file; written to a temporary file in the same folder, then renamed over
        `path` (a reader never sees half a file).
      encoded_images: 2P encoded images (bytes, bytearray, `np.bytes_` or 1-D uint8 arrays), pair p
        being images 2p and 2p + 1. They are stored as they are, not decoded or re-encoded.
      issame: P bools.
    """
    issame = list(issame)
    bad = [i for i, x in enumerate(issame) if not isinstance(x, (bool, np.bool_))]
    if bad:
        raise ValueError(f"issame must hold bools, got {type(issame[bad[0]]).__name__} at "
                         f"index {bad[0]}.")
    if not issame:
        raise ValueError("issame must hold at least one pair, got an empty sequence.")
    encoded = []
    for i, item in enumerate(encoded_images):
        data = _as_bytes(item)
        if data is None:
            raise ValueError(f"encoded_images[{i}] must be bytes, got {_describe(item)}.")
        encoded.append(data)
    if len(encoded) != 2 * len(issame):
        raise ValueError(f"{len(issame)} pairs need {2 * len(issame)} encoded_images, got "
                         f"{len(encoded)}.")
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump((encoded, [bool(x) for x in issame]), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ---------------------------------------------------------------------------------------------
# LFW-style image folder + pairs.txt.

def _parse_pairs(pairs_path: pathlib.Path, image_root: pathlib.Path, extension: str):
    """[(path_a, path_b, issame)] of a pairs.txt; ValueError naming the line for any problem."""
    lines = pairs_path.read_text().splitlines()
    numbered = [(n, line.split()) for n, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise ValueError(f"{pairs_path}: no pairs in the file.")
    expected = None
    first_number, first = numbered[0]
    if len(first) in (1, 2) and all(t.isdigit() for t in first):
        counts = [int(t) for t in first]
        # "<folds> <pairs per fold>": each fold holds that many same and as many different pairs;
        # "<pairs>" (pairsDevTrain.txt): that many same pairs, then as many different ones.
        expected = 2 * int(np.prod(counts))
        numbered = numbered[1:]
    pairs = []
    for number, tokens in numbered:
        where = f"{pairs_path}, line {number}"
        if len(tokens) == 3:
            names, indices, issame = (tokens[0], tokens[0]), (tokens[1], tokens[2]), True
        elif len(tokens) == 4:
            names, indices, issame = (tokens[0], tokens[2]), (tokens[1], tokens[3]), False
        else:
            raise ValueError(f"{where}: expected 'name i j' or 'name1 i name2 j', got "
                             f"{len(tokens)} fields: {' '.join(tokens)!r}.")
        paths = []
        for person, index in zip(names, indices):
            if not index.isdigit() or int(index) < 1:
                raise ValueError(f"{where}: the image number must be a positive integer, got "
                                 f"{index!r}.")
            path = image_root / person / f"{person}_{int(index):04d}.{extension}"
            if not path.is_file():
                raise ValueError(f"{where}: missing image {path}.")
            paths.append(path)
        pairs.append((paths[0], paths[1], issame))
    if not pairs:
        raise ValueError(f"{pairs_path}: no pairs after the header line.")
    if expected is not None and len(pairs) != expected:
        raise ValueError(f"{pairs_path}, line {first_number}: the header "
                         f"{' '.join(first)!r} announces {expected} pairs, the file lists "
                         f"{len(pairs)}.")
    return pairs


def load_pairs(pairs_path, image_root, *, image_size: int = 112, name: str | None = None,
               extension: str = "jpg", progress: bool = True) -> VerificationSet:
    """Reads an image folder with an LFW-style pairs.txt (Huang et al. 2007, LFW README).

    The file has an optional header line, "<folds> <pairs per fold>" (LFW's "10 300": ten folds,
    each of 300 same-person then 300 different-person pairs) or "<pairs>" (pairsDevTrain.txt),
    which must agree with the number of pair lines; then one pair per line:

        name  i  j            same person: ROOT/name/name_000i.jpg and ROOT/name/name_000j.jpg
        name1 i  name2 j      different people

    (numbers zero-padded to 4 digits, `extension` after the dot). The pairs keep the file's order,
    which is what the 10-fold protocol of `evaluate` splits. Every line and image is checked
    before anything is decoded.

    Args:
      pairs_path: the pairs file.
      image_root: the folder holding ROOT/<name>/<name>_<NNNN>.<extension>. The protocol expects
        aligned face crops (e.g. 112 x 112); other sizes are bilinearly resized to S x S, which
        does not align them.
      image_size: S.
      name: the set's name; default the image folder's name.
      extension: the image files' extension, without the dot.
      progress: progress bar for sets of `PROGRESS_MIN_IMAGES` or more images.

    Raises:
      ValueError: a malformed line, a header that disagrees with the pairs, or a missing image
        (naming the file, the line number and the problem), or an image that does not decode.
    """
    _check_image_size(image_size)
    pairs_path, image_root = pathlib.Path(pairs_path), pathlib.Path(image_root)
    if not pairs_path.is_file():
        raise ValueError(f"pairs_path {pairs_path} is not a file.")
    if not image_root.is_dir():
        raise ValueError(f"image_root {image_root} is not a folder.")
    pairs = _parse_pairs(pairs_path, image_root, extension.lstrip("."))
    files = [p for a, b, _ in pairs for p in (a, b)]
    encoded = [p.read_bytes() for p in files]
    name = image_root.name if name is None else name
    images = _decode_all(encoded, int(image_size), name, [str(p) for p in files], progress)
    issame = np.array([s for _, _, s in pairs], dtype=bool)
    return VerificationSet(name=name, images=images, issame=issame)


# ---------------------------------------------------------------------------------------------
# Drawing pairs from identity labels.

# Candidate pairs are listed exhaustively up to this many, and drawn by rejection beyond.
_ENUMERATE_LIMIT = 200_000


def _draw_unique(rng, needed, total, enumerate_all, draw_one):
    """`needed` distinct pairs (i < j): exhaustively listed when few, else by rejection."""
    if total <= _ENUMERATE_LIMIT:
        candidates = enumerate_all()
        return candidates[rng.choice(len(candidates), size=needed, replace=False)]
    seen, out = set(), []
    while len(out) < needed:
        pair = draw_one()
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return np.array(out, dtype=np.int64).reshape(needed, 2)


def sample_pairs(labels, num_pairs: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced verification pairs drawn from identity labels.

    Half of the pairs join two different images of one identity (drawn uniformly among all such
    pairs), half two images of different identities (uniformly among all such pairs); no pair is
    drawn twice and no image is paired with itself. Same and different pairs alternate (pair 2k
    same, pair 2k + 1 different), so every contiguous fold of even length is balanced. The draw
    is a function of (labels, num_pairs, seed) only (`np.random.default_rng(seed)`).

    Args:
      labels: int [N]; images with equal labels show the same identity.
      num_pairs: P, even and >= 2.
      seed: the generator's seed.

    Returns:
      index: int64 [P, 2], image indices with index[p, 0] < index[p, 1].
      issame: bool [P].

    Raises:
      ValueError: bad arguments, or fewer distinct same / different pairs than P / 2 (e.g. a
        single identity, or no identity with two images).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} of shape "
                         f"{labels.shape}.")
    if isinstance(num_pairs, bool) or not isinstance(num_pairs, (int, np.integer)) \
            or num_pairs < 2 or num_pairs % 2:
        raise ValueError(f"num_pairs must be an even int >= 2, got {num_pairs!r}.")
    half = int(num_pairs) // 2
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    counts = counts.astype(np.int64)
    pairs_per_class = counts * (counts - 1) // 2
    total_same = int(pairs_per_class.sum())
    n = labels.shape[0]
    total_diff = n * (n - 1) // 2 - total_same
    if total_same < half:
        raise ValueError(f"labels allow {total_same} distinct same-identity pairs (identities "
                         f"with two or more images: {int(np.sum(counts >= 2))}), {half} needed "
                         f"for num_pairs={num_pairs}.")
    if total_diff < half:
        raise ValueError(f"labels allow {total_diff} distinct different-identity pairs "
                         f"(identities: {len(classes)}), {half} needed for "
                         f"num_pairs={num_pairs}.")
    rng = np.random.default_rng(seed)
    order = np.argsort(inverse, kind="stable")  # image indices grouped by identity
    stops = np.cumsum(counts)
    members = np.split(order, stops[:-1])

    def all_same():
        parts = []
        for m in members:
            if len(m) >= 2:
                i, j = np.triu_indices(len(m), k=1)
                parts.append(np.stack([m[i], m[j]], axis=1))
        return np.concatenate(parts)

    class_p = pairs_per_class / total_same

    def one_same():
        m = members[rng.choice(len(members), p=class_p)]
        a, b = rng.choice(len(m), size=2, replace=False)
        return (int(min(m[a], m[b])), int(max(m[a], m[b])))

    def all_diff():
        # In `order`, each identity pairs with the contiguous block of the later identities.
        parts = []
        for start, stop in zip(stops - counts, stops):
            later = order[stop:]
            if later.size:
                a = np.repeat(order[start:stop], later.size)
                b = np.tile(later, stop - start)
                parts.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
        return np.concatenate(parts)

    # An ordered different pair (a, b) is uniform when a's identity c is drawn with probability
    # proportional to count_c (n - count_c), a uniformly in c, then b uniformly outside c.
    first_p = counts * (n - counts) / np.sum(counts * (n - counts))

    def one_diff():
        ca = rng.choice(len(members), p=first_p)
        other = counts.astype(np.float64)
        other[ca] = 0
        cb = rng.choice(len(members), p=other / other.sum())
        a, b = rng.choice(members[ca]), rng.choice(members[cb])
        return (int(min(a, b)), int(max(a, b)))

    same = _draw_unique(rng, half, total_same, all_same, one_same)
    diff = _draw_unique(rng, half, total_diff, all_diff, one_diff)
    index = np.empty((2 * half, 2), np.int64)
    index[0::2], index[1::2] = same, diff
    issame = np.zeros(2 * half, bool)
    issame[0::2] = True
    return index, issame


# ---------------------------------------------------------------------------------------------
# Embeddings.

def _l2_normalize(x: np.ndarray, what: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ValueError(f"{what} has a zero vector at row {zero[0]}; it cannot be L2-normalised.")
    return x / norms


def embed_pairs(embed_fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, *,
                batch_size: int, progress: bool = True) -> np.ndarray:
    """The flip-test embedding of every image: normalize(f(x) + f(flip(x))).

    insightface's verification test embeds each image and its horizontal mirror and L2-normalises
    their sum. Images are fed in batches of exactly `batch_size` (the last batch is padded with
    copies of image 0, whose embeddings are dropped), so a jitted `embed_fn` compiles once.

    Args:
      embed_fn: uint8 [B, S, S, 3] -> float [B, D] (normalising, scaling to [-1, 1], the model);
        called twice per batch (images, mirrored images) with B = batch_size.
      images: uint8 [N, S, S, 3] (N = 2P for a verification set).
      batch_size: B >= 1.
      progress: show a progress bar.

    Returns:
      float32 [N, D], unit rows.

    Raises:
      ValueError: bad images or batch_size; `embed_fn` returning the wrong shape, non-finite
        values, or a zero sum.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 \
            or images.shape[0] == 0:
        raise ValueError(f"images must be uint8 [N, S, S, 3] with N >= 1, got {images.dtype} "
                         f"{images.shape}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    n = images.shape[0]
    out = None
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="embedding", unit="batch", disable=not progress, leave=False):
        batch = images[start:start + batch_size]
        count = batch.shape[0]
        if count < batch_size:
            pad = np.repeat(images[:1], batch_size - count, axis=0)
            batch = np.concatenate([batch, pad])
        total = 0
        for x in (batch, np.ascontiguousarray(batch[:, :, ::-1])):
            e = np.asarray(embed_fn(x))
            if e.ndim != 2 or e.shape[0] != batch_size:
                raise ValueError(f"embed_fn must return [batch_size={batch_size}, D], got shape "
                                 f"{e.shape}.")
            if not np.all(np.isfinite(e)):
                raise ValueError(f"embed_fn returned non-finite values for images "
                                 f"{start}..{start + count - 1}.")
            total = total + e.astype(np.float64)
        if out is None:
            out = np.empty((n, total.shape[1]), np.float32)
        out[start:start + count] = _l2_normalize(total[:count], "the flip-summed embedding")
    return out


# ---------------------------------------------------------------------------------------------
# The protocol.

def fold_bounds(num_pairs: int, num_folds: int) -> list[tuple[int, int]]:
    """[(start, stop)] of `num_folds` contiguous folds over the pairs in order.

    As sklearn's `KFold(n_splits, shuffle=False)`: the first num_pairs % num_folds folds hold one
    pair more than the others.
    """
    sizes = np.full(num_folds, num_pairs // num_folds)
    sizes[:num_pairs % num_folds] += 1
    stops = np.cumsum(sizes)
    return [(int(b - s), int(b)) for s, b in zip(sizes, stops)]


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """float64 [P]: d_p = ||e_{2p} - e_{2p+1}||^2 of the L2-normalised embeddings, in [0, 4]."""
    e = np.asarray(embeddings, np.float64)
    return np.sum(np.square(e[0::2] - e[1::2]), axis=1)


def roc_curve(dist: np.ndarray, issame: np.ndarray):
    """The ROC of the rule "accept (predict same) when d_p <= t", over every distinct t.

    Returns:
      fpr, tpr, thresholds: float64 [K + 1] for the K distinct distances d_(1) < ... < d_(K):
        thresholds = (-inf, d_(1), ..., d_(K)); FAR(t) = #{different pairs with d <= t} /
        #{different pairs} and TAR(t) likewise over the same pairs; both start at 0 and end at 1.
    """
    order = np.argsort(dist, kind="stable")
    d, s = dist[order], issame[order]
    last = np.r_[d[1:] != d[:-1], True]  # the last pair of each run of equal distances
    tp = np.cumsum(s)[last]
    fp = np.cumsum(~s)[last]
    tpr = np.r_[0.0, tp / s.sum()]
    fpr = np.r_[0.0, fp / (~s).sum()]
    return fpr, tpr, np.r_[-np.inf, d[last]]


def evaluate(embeddings, issame, *, num_folds: int = 10, far_target: float = 1e-3,
             thresholds: np.ndarray | None = None) -> dict:
    """The standard verification protocol (LFW's 10-fold "unrestricted" accuracy, TAR@FAR, ROC).

    With e_i the L2-normalised embeddings and d_p = ||e_{2p} - e_{2p+1}||^2 in [0, 4], a pair is
    predicted same when d_p < t (strictly, as in insightface). The P pairs are split, in order,
    into `num_folds` contiguous folds (`fold_bounds`; LFW's pairs file lists its ten folds one
    after the other). For each fold k:

        t_k   = argmax_{t in thresholds} accuracy(t; pairs outside fold k)   (the smallest t on ties)
        acc_k = accuracy(t_k; pairs of fold k),

    accuracy(t; S) = #{p in S: (d_p < t) == issame_p} / |S|. This is insightface's
    `calculate_roc` (github.com/deepinsight/insightface, recognition/arcface_torch/eval/
    verification.py), which ArcFace (Deng et al. 2019) and the GSC paper report as mean +- std.

    TAR@FAR is computed over all pairs, without folds (insightface interpolates a threshold per
    fold instead): with FAR(t) and TAR(t) the fractions of different / same pairs with d_p <= t,

        t* = max{t in {-inf} U {d_p}: FAR(t) <= far_target},   TAR@FAR = TAR(t*),

    i.e. the largest set of accepted pairs, closed under ties of the distance, whose false accept
    rate does not exceed the target (no interpolation; t* = -inf accepts nothing).

    Args:
      embeddings: float [2P, D], pair p = rows (2p, 2p + 1); normalised again here (rows must be
        finite and non-zero).
      issame: bool [P] (or integers 0/1).
      num_folds: 2 <= num_folds <= P.
      far_target: the false accept rate of TAR@FAR, in (0, 1].
      thresholds: the increasing grid of candidate t; default `THRESHOLDS`, insightface's
        arange(0, 4, 0.01).

    Returns:
      A dict: 'accuracy' (mean of acc_k), 'accuracy_std' (population std of acc_k),
      'fold_accuracies' float64 [F], 'fold_thresholds' float64 [F] (t_k), 'best_threshold' (mean of
      t_k), 'tar', 'far' (FAR(t*), <= far_target), 'tar_threshold' (t*), 'far_target', 'fpr',
      'tpr', 'roc_thresholds' (`roc_curve` over all pairs), 'auc' (trapezoidal area under it: the
      probability that a random same pair is closer than a random different pair, ties counting
      half), 'num_pairs', 'num_folds'.

    Raises:
      ValueError: bad shapes or dtypes, non-finite or zero embeddings, num_folds outside
        [2, P], far_target outside (0, 1], or no same pair or no different pair.
    """
    e = np.asarray(embeddings)
    if e.ndim != 2 or e.shape[0] < 2 or e.shape[0] % 2 or e.shape[1] < 1:
        raise ValueError(f"embeddings must have shape [2P, D] with P, D >= 1, got {e.shape}.")
    if not (np.issubdtype(e.dtype, np.floating) or np.issubdtype(e.dtype, np.integer)) \
            or e.dtype == bool:
        raise ValueError(f"embeddings must be a real float array, got {e.dtype}.")
    e = e.astype(np.float64)
    if not np.all(np.isfinite(e)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(e), axis=1))[0])
        raise ValueError(f"embeddings must be finite; row {bad} holds NaN or Inf.")
    same = np.asarray(issame)
    if same.dtype != bool:
        if not np.issubdtype(same.dtype, np.integer) or not np.all((same == 0) | (same == 1)):
            raise ValueError(f"issame must be bool (or integers 0/1), got {same.dtype}.")
        same = same.astype(bool)
    num_pairs = e.shape[0] // 2
    if same.shape != (num_pairs,):
        raise ValueError(f"issame must have shape [P] = ({num_pairs},) for {e.shape[0]} "
                         f"embeddings, got {same.shape}.")
    if not same.any() or same.all():
        raise ValueError("issame must hold at least one same pair and one different pair.")
    if isinstance(num_folds, bool) or not isinstance(num_folds, (int, np.integer)) \
            or not 2 <= num_folds <= num_pairs:
        raise ValueError(f"num_folds must be an int in [2, P={num_pairs}], got {num_folds!r}.")
    if not 0 < far_target <= 1:
        raise ValueError(f"far_target must be in (0, 1], got {far_target!r}.")
    grid = THRESHOLDS if thresholds is None else np.asarray(thresholds, np.float64)
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)) \
            or np.any(np.diff(grid) <= 0):
        raise ValueError("thresholds must be a non-empty, finite, increasing 1-D array.")

    dist = pair_distances(_l2_normalize(e, "embeddings"))
    # correct[p, t]: the rule d_p < grid[t] gets pair p right.
    correct = (dist[:, None] < grid[None, :]) == same[:, None]
    bounds = fold_bounds(num_pairs, int(num_folds))
    per_fold = np.stack([correct[a:b].sum(axis=0) for a, b in bounds])  # [F, T]
    sizes = np.array([b - a for a, b in bounds])
    train_acc = (per_fold.sum(axis=0)[None, :] - per_fold) / (num_pairs - sizes)[:, None]
    best = np.argmax(train_acc, axis=1)
    fold_thresholds = grid[best]
    fold_accuracies = per_fold[np.arange(len(bounds)), best] / sizes

    fpr, tpr, roc_t = roc_curve(dist, same)
    k = int(np.flatnonzero(fpr <= far_target)[-1])
    return {
        "accuracy": float(np.mean(fold_accuracies)),
        "accuracy_std": float(np.std(fold_accuracies)),
        "fold_accuracies": fold_accuracies.astype(np.float64),
        "fold_thresholds": fold_thresholds.astype(np.float64),
        "best_threshold": float(np.mean(fold_thresholds)),
        "tar": float(tpr[k]),
        "far": float(fpr[k]),
        "tar_threshold": float(roc_t[k]),
        "far_target": float(far_target),
        "fpr": fpr,
        "tpr": tpr,
        "roc_thresholds": roc_t,
        "auc": float(np.trapezoid(tpr, fpr)),
        "num_pairs": int(num_pairs),
        "num_folds": int(num_folds),
    }


def plot_roc(results: dict, path, title: str = "") -> None:
    """Writes one ROC curve per set (TAR against FAR, log-scale FAR axis) to `path` (PNG, PDF, ...).

    Args:
      results: {set name: `evaluate`'s dict} (uses 'fpr', 'tpr', 'auc' and 'accuracy').
      path: the output image.
      title: the figure title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("results must hold at least one set.")
    fig = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lowest = 1.0
    for name, r in results.items():
        fpr, tpr = np.asarray(r["fpr"]), np.asarray(r["tpr"])
        positive = fpr > 0
        if positive.any():
            lowest = min(lowest, float(fpr[positive].min()))
        label = f"{name} (AUC {r['auc']:.4f}, acc {100 * r['accuracy']:.2f}%)"
        ax.plot(fpr[positive], tpr[positive], label=label)
    ax.set_xscale("log")
    ax.set_xlim(min(lowest, 1e-3) / 1.5, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
