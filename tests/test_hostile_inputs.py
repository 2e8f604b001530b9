"""Hostile inputs: the insightface .bin reader and the FER2013 CSV and image-folder readers.

A .bin from the internet must load only byte strings and bools, or be refused with a message that
names the file. Every hostile .bin is read in a child process (a crash cannot take pytest down)
under an address-space limit, and the child must return normally, quickly, with that message.
Files in the formats real .bin files use (Python 2 and 3 pickles of bytes, bools and numpy arrays)
still load, identically. FER2013's readers raise DataError with one line naming the file and the
line for every malformed row, and ignore hidden entries and glob characters in folder names.
"""

import collections
import io
import json
import os
import pathlib
import pickle
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from experiments.common.data import DataError
from experiments.face import verification as v
from experiments.fer2013 import data as fer

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: The children's address-space limit: numpy and Pillow need about 120 MB of it.
CHILD_MEMORY = 1 << 30
#: The longest a hostile file may take to be refused, in seconds.
QUICK = 5.0


# ---------------------------------------------------------------------------------------------
# Pickle opcodes, to write files no pickler writes.


def _global(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def _text(s):
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _bytes(data):
    return b"B" + struct.pack("<I", len(data)) + data


def _int(n):
    return b"J" + struct.pack("<i", n)


def _dtype(code, state):
    """numpy.dtype(code, False, True) and its BUILD state."""
    return _global("numpy", "dtype") + b"(" + _text(code) + b"\x89\x88tR" + state + b"b"


def _dtype_state(size=-1, flags=0, names=b"N", fields=b"N"):
    """numpy's version-3 dtype state: (3, '|', subarray, names, fields, size, align, flags)."""
    return (
        b"("
        + _int(3)
        + _text("|")
        + b"N"
        + names
        + fields
        + _int(size)
        + _int(1)
        + _int(flags)
        + b"t"
    )


def _array(dtype_ops, shape, raw):
    """numpy's protocol-2 array: _reconstruct(ndarray, (0,), b'b') + BUILD (1, shape, ...)."""
    return (
        _global("numpy._core.multiarray", "_reconstruct")
        + _global("numpy", "ndarray")
        + b"("
        + _int(0)
        + b"t"
        + _bytes(b"b")
        + b"\x87R"
        + b"("
        + _int(1)
        + b"("
        + b"".join(_int(d) for d in shape)
        + b"t"
        + dtype_ops
        + b"\x89"
        + _bytes(raw)
        + b"tb"
    )


def _bin(images_ops, issame_ops=b"\x88"):
    """A pickle of ([images...], [issame...]) at protocol 3."""
    return b"\x80\x03](" + images_ops + b"e](" + issame_ops + b"e\x86."


def _forged_object_dtype():
    """A 'V8' dtype whose BUILD state declares an object field at offset 0 (and the REFCOUNT flag
    without LIST_PICKLE), so numpy reads the array's 8 data bytes 'AAAAAAAA' as a pointer."""
    object_dtype = _dtype("O", _dtype_state(flags=63))
    fields = b"}" + _text("f0") + b"(" + object_dtype + _int(0) + b"ts"
    forged = _dtype(
        "V8", _dtype_state(size=8, flags=1, names=b"(" + _text("f0") + b"t", fields=fields)
    )
    return _bin(_array(forged, (1,), b"A" * 8) + _bytes(b"x"))


def _fields_on_uint8():
    """A uint8 dtype whose BUILD state tries to add fields."""
    fields = b"}" + _text("f0") + b"(" + _dtype("u1", _dtype_state()) + _int(0) + b"ts"
    forged = _dtype(
        "u1", _dtype_state(size=8, flags=1, names=b"(" + _text("f0") + b"t", fields=fields)
    )
    return _bin(_array(forged, (8,), b"A" * 8) + _bytes(b"x"))


def _amplified(copies=2000):
    """1 MiB of text in the memo, turned into bytes `copies` times by _codecs.encode: a 1 MiB
    file whose unpickling allocates `copies` MiB."""
    first = (
        _global("_codecs", "encode")
        + b"q\x00"
        + _text("a" * 2**20)
        + b"q\x01"
        + _text("latin1")
        + b"q\x02\x86R"
    )
    again = b"h\x00h\x01h\x02\x86R"
    return (
        b"\x80\x02](" + first + again * (copies - 1) + b"e](" + b"\x88" * (copies // 2) + b"e\x86."
    )


class _System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _png(value, size=4):
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), value).save(buffer, format="PNG")
    return buffer.getvalue()


def _real_bin(tmp_path):
    path = tmp_path / "real.bin"
    v.write_bin(path, [_png((10 * i, 0, 0)) for i in range(6)], [True, False, True])
    return path.read_bytes()


# ---------------------------------------------------------------------------------------------
# Hostile .bin files, read in a child process.

PETA = 10**15
HOSTILE = {  # name: (file contents, what the message must say)
    "forged_object_dtype": (_forged_object_dtype(), r"numpy dtype 'V8' is not allowed"),
    "fields_on_uint8": (_fields_on_uint8(), r"dtype's state may only hold numbers and strings"),
    "object_dtype": (
        _bin(_array(_dtype("O", _dtype_state(flags=63)), (1,), b"A" * 8) + _bytes(b"x")),
        r"numpy dtype 'O' is not allowed",
    ),
    "bytes_call_1e15": (
        b"\x80\x02c__builtin__\nbytes\n\x8a\x07" + PETA.to_bytes(7, "little") + b"\x85R.",
        r"may only copy a byte string.*1000000000000000",
    ),
    "bytes8_1e15": (
        b"\x80\x05\x8e" + struct.pack("<Q", PETA) + b"\x94.",
        r"BINBYTES8 argument of 1000000000000000 bytes is declared, the file has 2 ",
    ),
    "unicode8_1e15": (
        b"\x80\x05\x8d" + struct.pack("<Q", PETA) + b"\x94.",
        r"BINUNICODE8 argument of 1000000000000000 bytes is declared",
    ),
    "frame_1e15": (
        b"\x80\x04\x95" + struct.pack("<Q", PETA) + b"]\x94.",
        r"frame of 1000000000000000 bytes is declared",
    ),
    "amplified": (_amplified(), r"more than twice the file's"),
    "os_system": (None, r"refused global (posix|nt)\.system"),  # written by the test
    "other_class": (
        pickle.dumps(([collections.OrderedDict(), b"x"], [True])),
        r"refused global collections\.OrderedDict",
    ),
    "mxnet_ndarray": (
        _bin(_global("mxnet.ndarray.ndarray", "NDArray") + b")R" + _bytes(b"x")),
        r"refused global mxnet\.ndarray\.ndarray\.NDArray",
    ),
    "out_of_band_buffer": (b"\x80\x05](\x97\x97e](\x88e\x86.", r"opcode NEXT_BUFFER"),
    "float_issame": (pickle.dumps(([b"a", b"b"], [1.0])), r"opcode BINFLOAT is not allowed"),
    "set_images": (pickle.dumps(({b"a", b"b"}, [True])), r"opcode EMPTY_SET is not allowed"),
    "empty_file": (b"", r"truncated"),
    "not_a_pickle": (_png((1, 2, 3)), r"opcode PERSID is not allowed"),
    "not_an_opcode": (b"\xff\xd8\xff\xe0 a JPEG", r"byte 0xff is not a pickle opcode"),
    "truncated": (None, r"truncated"),  # written by the test from a real file
    "truncated_protocol2": (
        pickle.dumps(([b"a" * 300, b"b"], [True]), protocol=2)[:200],
        r"truncated",
    ),
    "truncated_protocol0": (pickle.dumps(([b"a", b"b"], [True]), protocol=0)[:30], r"truncated"),
    "dict": (pickle.dumps({"images": [], "issame": []}), r"found dict"),
    "three_items": (pickle.dumps([[b"a", b"b"], [True], [1]]), r"found list of length 3"),
    "bare_bytes": (pickle.dumps(b"x" * 100), r"found bytes"),
    "images_not_a_list": (pickle.dumps((b"ab", [True])), r"images must be a sequence"),
    "text_image": (pickle.dumps((["a", "b"], [True])), r"image 0 must be a byte string, found str"),
    "int_issame": (pickle.dumps(([b"a", b"b"], [1])), r"found int at index 0"),
    "too_many_images": (
        pickle.dumps(([b"a", b"b", b"c"], [True])),
        r"1 pairs need 2 images, the file holds 3",
    ),
    "too_few_images": (
        pickle.dumps(([b"a", b"b"], [True, False])),
        r"2 pairs need 4 images, the file holds 2",
    ),
    "no_pairs": (pickle.dumps(([], [])), r"holds no pairs"),
    "stack_underflow": (b"\x80\x03\x86.", r"empty stack"),
    "memo_missing": (b"\x80\x03h\x07.", r"memo entry 7"),
}

CHILD = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]),) * 2)
from experiments.face import verification as v
for path in sys.argv[2:]:
    start = time.perf_counter()
    try:
        v.read_bin(path)
        kind, message = "loaded", ""
    except BaseException as e:
        kind, message = type(e).__name__, str(e)
    print(json.dumps([path, kind, time.perf_counter() - start, message]), flush=True)
"""


@pytest.fixture(scope="module")
def hostile_results(tmp_path_factory):
    """{name: (error type, seconds, message)} of reading each HOSTILE file in one child process
    (a crash ends it: the files it did not reach have no result), and the os.system marker."""
    folder = tmp_path_factory.mktemp("hostile")
    marker = folder / "system-ran"
    contents = dict(HOSTILE)
    contents["os_system"] = pickle.dumps(([_System(f"touch {marker}"), b"x"], [True]))
    contents["truncated"] = _real_bin(folder)[:-40]
    paths = {}
    for name, (data, _) in HOSTILE.items():
        paths[name] = folder / f"{name}.bin"
        paths[name].write_bytes(contents[name] if data is None else data)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(CHILD_MEMORY)] + [str(p) for p in paths.values()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    results = {}
    for line in child.stdout.splitlines():
        path, kind, seconds, message = json.loads(line)
        results[pathlib.Path(path).stem] = (kind, seconds, message)
    return results, child, paths, marker


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_bin_is_refused_quickly_with_a_message(hostile_results, name):
    results, child, paths, marker = hostile_results
    assert name in results, (
        f"the child process died (exit status {child.returncode}) before or while reading "
        f"{name}.bin: {child.stderr[-2000:]}"
    )
    kind, seconds, message = results[name]
    assert kind == "BinFileError", f"{name}: {kind}: {message[:500]}"
    assert str(paths[name]) in message
    assert "\n" not in message and len(message) < 600
    assert seconds < QUICK, f"{name} took {seconds:.1f} s to refuse"
    assert re.search(HOSTILE[name][1], message.replace(str(paths[name]), "FILE")), message


def test_the_child_reading_hostile_files_exits_normally(hostile_results):
    results, child, _, marker = hostile_results
    assert child.returncode == 0, f"exit status {child.returncode}: {child.stderr[-2000:]}"
    assert set(results) == set(HOSTILE)
    assert not marker.exists(), "the pickle's os.system call ran"


def test_bin_file_error_is_both_errors_read_bin_raised_before():
    assert issubclass(v.BinFileError, pickle.UnpicklingError)
    assert issubclass(v.BinFileError, ValueError)


# ---------------------------------------------------------------------------------------------
# Files in the formats real .bin files use load, identically.


def _images(count, seed=0):
    """`count` distinct byte strings of varied lengths, every byte value present."""
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes()
        + bytes(range(256))
        for _ in range(count)
    ]


def _issame(count):
    return [bool(x) for x in np.random.default_rng(count).integers(0, 2, count)]


def _assert_reads(path, images, issame):
    encoded, labels = v.read_bin(path)
    assert encoded == [bytes(x) for x in images]
    assert all(type(x) is bytes for x in encoded)
    assert labels.dtype == bool and labels.tolist() == list(issame)


def test_write_bin_files_read_back_identically(tmp_path):
    images, issame = _images(2004), _issame(1002)  # lists beyond pickle's 1000-item batches
    v.write_bin(tmp_path / "lfw.bin", images, issame)
    _assert_reads(tmp_path / "lfw.bin", images, issame)
    shared = [images[0], images[1], images[0], images[2]]  # one bytes object in two pairs
    v.write_bin(tmp_path / "shared.bin", shared, [True, False])
    _assert_reads(tmp_path / "shared.bin", shared, [True, False])


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_pickles_of_bytes_and_bools_read_identically(tmp_path, protocol):
    images, issame = _images(2004), _issame(1002)
    path = tmp_path / "plain.bin"
    with open(path, "wb") as f:
        pickle.dump((images, issame), f, protocol=protocol)
    _assert_reads(path, images, issame)
    images[3] = bytearray(images[3])  # bytearray (protocol 5: BYTEARRAY8)
    path.write_bytes(pickle.dumps((images, issame), protocol=protocol))
    _assert_reads(path, images, issame)


def _py2_string(data):
    return b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<I", len(data))


def test_python2_pickles_read_identically(tmp_path):
    """Python 2 wrote the published files: str (bytes) as SHORT_BINSTRING / BINSTRING."""
    images, issame = _images(6), [True, False, True]
    memo = iter(range(3, 100))
    items = b"".join(_py2_string(x) + x + b"q" + bytes([next(memo)]) for x in images)
    labels = b"".join(b"\x88" if s else b"\x89" for s in issame)
    protocol2 = b"\x80\x02]q\x01(" + items + b"e]q\x02(" + labels + b"e\x86q\x00."
    (tmp_path / "p2.bin").write_bytes(protocol2)
    _assert_reads(tmp_path / "p2.bin", images, issame)
    # Protocol 0, pickle.dump's default in Python 2: quoted strings, bools as I01 / I00.
    items = b"".join(b"S" + repr(x)[1:].encode() + b"\np%d\na" % n for n, x in enumerate(images))
    labels = b"".join(b"I01\na" if s else b"I00\na" for s in issame)
    protocol0 = b"((lp100\n" + items + b"(lp101\n" + labels + b"tp102\n."
    (tmp_path / "p0.bin").write_bytes(protocol0)
    _assert_reads(tmp_path / "p0.bin", images, issame)


def _python2_uint8_array(raw):
    """How numpy under Python 2 pickled a uint8 [N, 1] array (cv2.imencode's output)."""
    dtype = (
        b"cnumpy\ndtype\n(U\x02u1K\x00K\x01tR(K\x03U\x01|NNNJ\xff\xff\xff\xff"
        b"J\xff\xff\xff\xffK\x00tb"
    )
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
        b"(K\x01" + _int(len(raw)) + b"K\x01\x86" + dtype + b"\x89" + _py2_string(raw) + raw + b"tb"
    )


@pytest.mark.parametrize("protocol", [2, 3, 4, pickle.HIGHEST_PROTOCOL])
def test_numpy_images_and_labels_read_identically(tmp_path, protocol):
    """uint8 [N] and [N, 1] arrays (cv2.imencode), np.bytes_, and issame as a numpy bool array."""
    images = _images(6, seed=protocol)
    items = [
        np.frombuffer(images[0], np.uint8),
        np.frombuffer(images[1], np.uint8)[:, None],
        np.bytes_(images[2]),
        np.array(images[3]),
        bytearray(images[4]),
        images[5],
    ]
    issame = np.array([True, False, True])
    path = tmp_path / "numpy.bin"
    path.write_bytes(pickle.dumps((items, issame), protocol=protocol))
    _assert_reads(path, images, issame)
    path.write_bytes(
        pickle.dumps((items, [np.bool_(True), np.bool_(False), True]), protocol=protocol)
    )
    _assert_reads(path, images, issame)


def test_python2_numpy_arrays_read_identically(tmp_path):
    images = _images(2, seed=7)
    path = tmp_path / "py2numpy.bin"
    path.write_bytes(
        b"\x80\x02](" + b"".join(_python2_uint8_array(x) for x in images) + b"e](\x88e\x86."
    )
    _assert_reads(path, images, [True])


def test_load_bin_decodes_numpy_images_like_bytes(tmp_path):
    encoded = [_png((40 * i, 255 - 30 * i, 7)) for i in range(4)]
    items = [np.frombuffer(x, np.uint8)[:, None] for x in encoded]
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"cv2_{protocol}.bin"
        path.write_bytes(pickle.dumps((items, np.array([True, False])), protocol=protocol))
        vset = v.load_bin(path, image_size=4, progress=False)
        v.write_bin(tmp_path / "plain.bin", encoded, [True, False])
        plain = v.load_bin(tmp_path / "plain.bin", image_size=4, progress=False)
        np.testing.assert_array_equal(vset.images, plain.images)
        np.testing.assert_array_equal(vset.issame, [True, False])


# ---------------------------------------------------------------------------------------------
# FER2013: the Kaggle CSV.

SIDE = 2  # 2 x 2 faces, 4 pixels a row


def _csv_lines():
    """A valid CSV: header, then one row per (usage, emotion)."""
    rows = [
        f"{label},{' '.join(str((7 * label + k) % 256) for k in range(SIDE * SIDE))},{usage}"
        for usage in fer.USAGES
        for label in range(len(fer.EMOTIONS))
    ]
    return ["emotion,pixels,Usage"] + rows


def _write(tmp_path, lines, name="fer2013.csv"):
    path = tmp_path / name
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return str(path)


def _with_row(row, line=3):
    """The valid CSV with its line `line` replaced by `row`."""
    lines = _csv_lines()
    lines[line - 1] = row
    return lines


BAD_CSV = {  # name: (lines, line number, what the message says)
    "fewer_fields": (_with_row("3,1 2 3 4"), 3, r"2 fields; every row needs the header's 3"),
    "one_field": (_with_row("3"), 3, r"1 fields; every row needs the header's 3"),
    "more_fields": (_with_row("3,1 2 3 4,Training,x"), 3, r"4 fields"),
    "enormous_pixel": (
        _with_row("3,1 2 3 " + "9" * 30 + ",Training"),
        3,
        r"pixels integers separated by spaces",
    ),
    "huge_pixel_digits": (
        _with_row("3,1 2 3 " + "9" * 5000 + ",Training"),
        3,
        r"pixels integers separated by spaces",
    ),
    "non_integer_pixel": (_with_row("3,1 2 x 4,Training"), 3, r"pixels integers"),
    "fractional_pixel": (_with_row("3,1 2 3.5 4,Training"), 3, r"pixels integers"),
    "pixel_above_255": (_with_row("3,1 2 3 256,Training"), 3, r"pixel values must be in 0\.\.255"),
    "negative_pixel": (_with_row("3,1 -2 3 4,Training"), 3, r"pixel values must be in 0\.\.255"),
    "wrong_pixel_count": (_with_row("3,1 2 3,Training"), 3, r"3 pixels; every row needs"),
    "no_pixels": (_with_row("3,,Training", line=2), 2, r"0 pixels; every row needs"),
    "emotion_7": (_with_row("7,1 2 3 4,Training"), 3, r"emotion 7 is outside 0\.\.6"),
    "emotion_negative": (_with_row("-1,1 2 3 4,Training"), 3, r"emotion -1 is outside"),
    "emotion_enormous": (_with_row("9" * 30 + ",1 2 3 4,Training"), 3, r"is outside 0\.\.6"),
    "emotion_text": (_with_row("happy,1 2 3 4,Training"), 3, r"emotion must be an integer"),
    "emotion_empty": (_with_row(",1 2 3 4,Training"), 3, r"emotion must be an integer"),
    "unknown_usage": (_with_row("3,1 2 3 4,Validation"), 3, r"Usage 'Validation' is not one of"),
    "empty_usage": (_with_row("3,1 2 3 4,"), 3, r"Usage '' is not one of"),
    "missing_column": (
        ["emotion,image,Usage"] + _csv_lines()[1:],
        1,
        r"the header lacks the columns \['pixels'\]",
    ),
    "doubled_column": (
        ["emotion,pixels,Usage,pixels"] + [x + ",1" for x in _csv_lines()[1:]],
        1,
        r"names the columns \['pixels'\] more than once",
    ),
    "empty_file": ([], 1, r"the file is empty"),
    "blank_header": ([""] + _csv_lines(), 1, r"the first line is empty"),
    "not_utf8": (_with_row(b"3,1 2 3 4,Train\xffing"), 3, r"not UTF-8 text"),
    "huge_field": (_with_row("3," + "1 " * 100_000 + ",Training"), 3, r"not a CSV row"),
}


@pytest.mark.parametrize("name", list(BAD_CSV))
def test_a_malformed_csv_row_names_the_file_and_line(tmp_path, name):
    lines, line, message = BAD_CSV[name]
    path = _write(tmp_path, lines)
    with pytest.raises(DataError, match=message) as info:
        fer.load_csv(path)
    text = str(info.value)
    assert text.startswith(f"{path}:{line}: "), text
    assert "\n" not in text and len(text) < 400, text


def test_a_valid_csv_with_blank_lines_a_bom_and_quotes_loads(tmp_path):
    lines = _csv_lines()
    lines[0] = "\ufeff" + lines[0]
    lines = (
        lines[:5]
        + [""]
        + [
            line.replace(",", ',"', 1).replace(",T", '",T') if "Training" in line else line
            for line in lines[5:]
        ]
    )
    splits = fer.load_csv(_write(tmp_path, lines))
    assert [len(splits.usage(u)[1]) for u in fer.USAGES] == [len(fer.EMOTIONS)] * 3
    assert splits.training[0].shape == (len(fer.EMOTIONS), SIDE, SIDE, 1)
    images, labels = splits.training
    for image, label in zip(images, labels):
        np.testing.assert_array_equal(image.ravel(), [(7 * label + k) % 256 for k in range(4)])


def test_a_header_only_csv_names_the_missing_usage(tmp_path):
    with pytest.raises(DataError, match="has no rows with Usage 'Training'"):
        fer.load_csv(_write(tmp_path, ["emotion,pixels,Usage"]))


# ---------------------------------------------------------------------------------------------
# FER2013: the image folder.


def _faces(seed=0):
    rng = np.random.default_rng(seed)
    return {
        split: [rng.integers(0, 256, (4, 4), dtype=np.uint8) for _ in fer.EMOTIONS]
        for split in fer.FOLDER_USAGE
    }


def _write_faces(root, faces, name=lambda emotion: emotion, file="{n}.png"):
    for split, images in faces.items():
        for n, (emotion, face) in enumerate(zip(fer.EMOTIONS, images)):
            folder = root / split / name(emotion)
            folder.mkdir(parents=True)
            Image.fromarray(face).save(folder / file.format(n=n))
    return root


def test_the_folder_reader_ignores_hidden_entries_and_glob_characters(tmp_path):
    faces = _faces()
    clean = fer.load_folder(str(_write_faces(tmp_path / "clean", faces)))
    root = _write_faces(
        tmp_path / "runs[1]" / "fer*", faces, name=str.capitalize, file="face[{n}].png"
    )
    junk = b"\x00\x05\x16\x07 AppleDouble, not a PNG"
    for split in fer.FOLDER_USAGE:
        (root / split / ".ipynb_checkpoints" / "x").mkdir(parents=True)  # hidden folder
        (root / split / ".ipynb_checkpoints" / "x" / "0.png").write_bytes(junk)
        (root / split / ".DS_Store").write_bytes(junk)
        (root / split / "labels.csv").write_text("a plain file beside the emotion folders")
        happy = root / split / "Happy"
        (happy / ".DS_Store").write_bytes(junk)
        (happy / "._face[3].png").write_bytes(junk)  # macOS resource fork: hidden, not a PNG
        (happy / ".ipynb_checkpoints").mkdir()
        (happy / ".ipynb_checkpoints" / "face-checkpoint.png").write_bytes(junk)
        (happy / "folder.png").mkdir()  # a folder named like an image
    messy = fer.load_folder(str(root))
    for usage in fer.USAGES:
        for got, want in zip(messy.usage(usage), clean.usage(usage)):
            np.testing.assert_array_equal(got, want)


def test_a_hidden_folder_is_not_an_unknown_emotion(tmp_path):
    root = _write_faces(tmp_path / "a[b]", _faces())
    (root / "train" / ".cache").mkdir()
    fer.load_folder(str(root))
    (root / "train" / "joy").mkdir()
    with pytest.raises(DataError, match="unknown emotion folder"):
        fer.load_folder(str(root))
