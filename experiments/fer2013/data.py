"""FER2013 (Goodfellow et al., 2013) from the Kaggle CSV or from an image-folder copy.

Two sources, one result:
- the Kaggle `fer2013.csv`: columns `emotion` (0-6), `pixels` (48*48 space-separated 0-255,
  row-major) and `Usage` (Training / PublicTest / PrivateTest);
- an image folder DIR/{train,val,test}/<emotion>/<image>, where train holds "Training", val
  "PublicTest" and test "PrivateTest" (the folder release of the same faces).
Both give the same label order, the CSV's: angry 0, disgust 1, fear 2, happy 3, sad 4,
surprise 5, neutral 6 (folder names are mapped by name, case-insensitively, never by their
alphabetical order), and each split in the same order: sorted by the SHA-1 of the pixels, then by
label. So identical faces give identical arrays from either source, and since that order is
unrelated to the classes, the first N images of a split are a class-mixed subset.

Which of the two test usages is "validation" differs between codebases: usef-kh/fer (the code of
Khairuddin & Chen 2021, data/fer2013.py) validates on PrivateTest and tests on PublicTest, the
common convention is the reverse. `make_dataset(..., val_usage=...)` takes either; the default is
the reference code's.
"""

import csv
import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from experiments.common.data import DataError
from experiments.common.data.folders import IMAGE_SUFFIXES
from experiments.common.data.folders import class_folders
from experiments.common.data.folders import image_files

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
USAGES = ("Training", "PublicTest", "PrivateTest")
FOLDER_USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
VAL_USAGES = ("PrivateTest", "PublicTest")
DEFAULT_VAL_USAGE = "PrivateTest"  # usef-kh/fer: val = PrivateTest, test = PublicTest
CSV_COLUMNS = ("emotion", "pixels", "Usage")
FOLDER_LAYOUT = (
    "expected DIR/train/<emotion>/<image>, DIR/val/<emotion>/<image> and "
    f"DIR/test/<emotion>/<image> with <emotion> in {', '.join(EMOTIONS)}"
)


class FerSplits(NamedTuple):
    """The three FER2013 usages, each (uint8 images [N, S, S, 1], int32 labels [N]).

    Attributes:
      training, public_test, private_test: the splits of the official protocol.
      source: the file or folder they were read from.
    """

    training: tuple
    public_test: tuple
    private_test: tuple
    source: str

    def usage(self, name: str) -> tuple:
        """The (images, labels) of usage `name` (one of USAGES)."""
        return {
            "Training": self.training,
            "PublicTest": self.public_test,
            "PrivateTest": self.private_test,
        }[name]


class FerDataset(NamedTuple):
    """Train / validation / test arrays of one protocol choice.

    Attributes:
      train_images, train_labels, val_images, val_labels, test_images, test_labels: uint8
        [N, S, S, 1] images and int32 [N] labels.
      class_names: EMOTIONS.
      val_usage, test_usage: which usage each evaluation split is.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple
    val_usage: str
    test_usage: str


def canonical_order(images: np.ndarray, labels: np.ndarray) -> tuple:
    """Sorts a split by (SHA-1 of each image's bytes, label); returns (images, labels)."""
    digests = [hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images]
    order = sorted(range(len(labels)), key=lambda n: (digests[n], int(labels[n])))
    return images[order], labels[order]


def _emotion_folders(split_dir: str) -> dict:
    """{label: folder path} of one split; raises DataError on unknown or missing emotions.

    The visible sub-folders of `split_dir` (`folders.class_folders`: hidden entries such as
    `.ipynb_checkpoints` and plain files beside them are ignored), mapped to labels by name,
    case-insensitively.
    """
    folders = {}
    for name in class_folders(split_dir):
        path = os.path.join(split_dir, name)
        if name.lower() not in EMOTIONS:
            raise DataError(f"unknown emotion folder {path!r}; {FOLDER_LAYOUT}.")
        label = EMOTIONS.index(name.lower())
        if label in folders:
            raise DataError(f"two folders for {EMOTIONS[label]!r} in {split_dir!r}.")
        folders[label] = path
    missing = [EMOTIONS[k] for k in range(len(EMOTIONS)) if k not in folders]
    if missing:
        raise DataError(f"{split_dir!r} lacks the emotion folders {missing}; {FOLDER_LAYOUT}.")
    return folders


def _list_folder(data_dir: str) -> dict:
    """{usage: [(path, label), ...]} of an image folder; raises DataError on a bad layout."""
    if not os.path.isdir(data_dir):
        raise DataError(
            f"--data_dir {data_dir!r} is not a directory; {FOLDER_LAYOUT} (or pass "
            "the Kaggle fer2013.csv with --csv)."
        )
    listing = {}
    for split, usage in FOLDER_USAGE.items():
        split_dir = os.path.join(data_dir, split)
        if not os.path.isdir(split_dir):
            raise DataError(f"--data_dir {data_dir!r} has no '{split}' folder; {FOLDER_LAYOUT}.")
        files = []
        for label, folder in _emotion_folders(split_dir).items():
            images = image_files(folder)  # visible image files; names are taken literally
            if not images:
                raise DataError(f"{folder!r} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
            files += [(path, label) for path in images]
        listing[usage] = files
    return listing


def _decode_gray(path: str) -> np.ndarray:
    """One image file as uint8 [H, W] grayscale."""
    from PIL import Image  # pylint: disable=g-import-not-at-top

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for files it cannot decode
        raise DataError(f"cannot read the image {path!r}: {e}") from e


def _stack_faces(images: list, names: list, where: str) -> np.ndarray:
    """Stacks [S, S] faces as uint8 [N, S, S, 1]; raises DataError unless all are one size."""
    shapes = {im.shape for im in images}
    if len(shapes) != 1 or any(h != w for h, w in shapes):
        bad = next(
            n
            for n, im in zip(names, images)
            if im.shape != images[0].shape or im.shape[0] != im.shape[1]
        )
        raise DataError(
            f"faces in {where} must all be one square size (48x48 in FER2013); {bad} is {shapes}."
        )
    return np.stack(images)[..., None]


def load_folder(data_dir: str) -> FerSplits:
    """Reads DIR/{train,val,test}/<emotion>/* (any image format; converted to grayscale)."""
    listing = _list_folder(data_dir)
    splits = []
    for usage in USAGES:
        paths = [p for p, _ in listing[usage]]
        with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
            faces = list(pool.map(_decode_gray, paths, chunksize=256))
        images = _stack_faces(faces, paths, repr(os.path.join(data_dir, usage)))
        labels = np.array([label for _, label in listing[usage]], np.int32)
        splits.append(canonical_order(images, labels))
    sizes = {s[0].shape[1] for s in splits}
    if len(sizes) != 1:
        raise DataError(f"the splits of {data_dir!r} have faces of different sizes {sizes}.")
    return FerSplits(*splits, source=os.path.abspath(data_dir))


def _clipped(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _csv_rows(f, path: str):
    """Yields (line number, fields) of each non-empty row of the UTF-8 CSV file `f` (binary).

    Lines are decoded one by one, so a byte that is not UTF-8 is reported on its own line; the
    number is that of the row's last line (a quoted field may span lines). Raises DataError,
    naming the file and the line, for text that is not UTF-8 or not CSV.
    """
    reader = csv.reader(_decoded_lines(f, path))
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(
                f"{path}:{reader.line_num}: not a CSV row ({_clipped(str(e))})."
            ) from None
        if fields:
            yield reader.line_num, fields


def _decoded_lines(lines, path: str):
    """The lines of a binary file as text (UTF-8, an optional byte-order mark dropped)."""
    for number, line in enumerate(lines, start=1):
        try:
            yield line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"{path}:{number}: not UTF-8 text ({e.reason} at byte {e.start} of "
                "the line); pass the Kaggle fer2013.csv."
            ) from None


def _csv_columns(header: list, path: str) -> dict:
    """{column: index} of CSV_COLUMNS in the header row; DataError if one is missing or doubled."""
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise DataError(
            f"{path}:1: the header lacks the columns {missing}; it must name "
            f"{', '.join(CSV_COLUMNS)} (found {_clipped(repr(header))})."
        )
    doubled = [c for c in CSV_COLUMNS if header.count(c) > 1]
    if doubled:
        raise DataError(f"{path}:1: the header names the columns {doubled} more than once.")
    return {c: header.index(c) for c in CSV_COLUMNS}


def _parse_row(fields: list, columns: dict, width: int, where: str) -> tuple:
    """(usage, label, int64 pixels) of one CSV row; DataError naming `where` for any problem."""
    if len(fields) != width:
        raise DataError(
            f"{where}: {len(fields)} fields; every row needs the header's {width} "
            f"({', '.join(CSV_COLUMNS)} and the others it names)."
        )
    usage = fields[columns["Usage"]].strip()
    if usage not in USAGES:
        raise DataError(
            f"{where}: Usage {_clipped(repr(usage), 60)} is not one of {', '.join(USAGES)}."
        )
    try:
        label = int(fields[columns["emotion"]])
        pixels = np.array(fields[columns["pixels"]].split(), dtype=np.int64)
    except (ValueError, OverflowError) as e:  # OverflowError: a pixel beyond int64
        raise DataError(
            f"{where}: emotion must be an integer and pixels integers separated by "
            f"spaces ({_clipped(str(e))})."
        ) from e
    if not 0 <= label < len(EMOTIONS):
        raise DataError(
            f"{where}: emotion {_clipped(str(label), 20)} is outside "
            f"0..{len(EMOTIONS) - 1} "
            f"({', '.join(f'{k}={e}' for k, e in enumerate(EMOTIONS))})."
        )
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise DataError(f"{where}: pixel values must be in 0..255.")
    return usage, label, pixels


def load_csv(path: str) -> FerSplits:
    """Reads the Kaggle fer2013.csv (columns emotion, pixels, Usage in any order; extra ignored).

    Every row must have the header's number of fields, an integer emotion in 0..6, a Usage of
    USAGES and the same square number of integer pixels in 0..255 as the first row; any other
    row, an empty file or a header without those columns raises DataError with one line that
    names the file and the line.
    """
    if not os.path.isfile(path):
        raise DataError(
            f"--csv {path!r} is not a file; pass the Kaggle fer2013.csv "
            f"(columns {', '.join(CSV_COLUMNS)})."
        )
    rows = {usage: ([], []) for usage in USAGES}
    with open(path, "rb") as f:
        records = _csv_rows(f, path)
        line, header = next(records, (1, None))
        if header is None:
            raise DataError(
                f"{path}:1: the file is empty; the Kaggle fer2013.csv starts with the "
                f"header {','.join(CSV_COLUMNS)}."
            )
        if line != 1:
            raise DataError(
                f"{path}:1: the first line is empty; it must be the header naming "
                f"{', '.join(CSV_COLUMNS)}."
            )
        columns = _csv_columns(header, path)
        side = None
        for line, fields in records:
            where = f"{path}:{line}"
            usage, label, pixels = _parse_row(fields, columns, len(header), where)
            if side is None:
                side = math.isqrt(pixels.size)
            if pixels.size != side * side or side == 0:
                raise DataError(
                    f"{where}: {pixels.size} pixels; every row needs the same "
                    "square count (2304 = 48x48 in FER2013)."
                )
            rows[usage][0].append(pixels.astype(np.uint8).reshape(side, side, 1))
            rows[usage][1].append(label)
    splits = []
    for usage in USAGES:
        images, labels = rows[usage]
        if not images:
            raise DataError(
                f"{path!r} has no rows with Usage {usage!r}; FER2013 has Training, "
                "PublicTest and PrivateTest rows."
            )
        splits.append(canonical_order(np.stack(images), np.array(labels, np.int32)))
    return FerSplits(*splits, source=os.path.abspath(path))


def load(data_dir: str | None = None, csv_path: str | None = None) -> FerSplits:
    """Reads FER2013 from exactly one of an image folder (`data_dir`) or the CSV (`csv_path`)."""
    if bool(data_dir) == bool(csv_path):
        raise DataError(
            "pass exactly one of --data_dir (image folder DIR/{train,val,test}/"
            "<emotion>/*) and --csv (the Kaggle fer2013.csv)."
        )
    return load_folder(data_dir) if data_dir else load_csv(csv_path)


def check_val_usage(val_usage: str) -> str:
    """Returns the test usage paired with `val_usage`; raises ValueError for anything else."""
    if val_usage not in VAL_USAGES:
        raise ValueError(
            f"--val_usage must be one of {', '.join(VAL_USAGES)} (the other one is "
            f"the test set), got {val_usage!r}."
        )
    return VAL_USAGES[1 - VAL_USAGES.index(val_usage)]


def make_dataset(splits: FerSplits, val_usage: str = DEFAULT_VAL_USAGE) -> FerDataset:
    """Assigns the usages: Training trains, `val_usage` validates, the other test usage tests."""
    test_usage = check_val_usage(val_usage)
    return FerDataset(
        *splits.training,
        *splits.usage(val_usage),
        *splits.usage(test_usage),
        EMOTIONS,
        val_usage,
        test_usage,
    )
