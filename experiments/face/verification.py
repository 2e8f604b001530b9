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
    pair labels) without unpickling them: only byte strings, bools and byte / bool arrays are
    ever built, anything else is refused with a message naming the file.
  * `load_pairs` reads an image folder with an LFW-style `pairs.txt`.
  * `write_bin` writes the `.bin` format; `sample_pairs` draws balanced pairs from identity labels
    (`python -m experiments.face.make_bin` builds a `.bin` from an identity folder).

Everything here is NumPy, Pillow and matplotlib; the model is the caller's `embed_fn`.
"""

import codecs
import dataclasses
import io
import math
import os
import pathlib
import pickle
import pickletools
import re
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
            raise ValueError(
                f"images must be a uint8 numpy array, got "
                f"{getattr(images, 'dtype', type(images).__name__)}."
            )
        if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[3] != 3:
            raise ValueError(f"images must have shape [2P, S, S, 3], got {images.shape}.")
        if not isinstance(issame, np.ndarray) or issame.dtype != bool or issame.ndim != 1:
            raise ValueError(
                f"issame must be a 1-D bool numpy array, got "
                f"{getattr(issame, 'dtype', type(issame).__name__)} of shape "
                f"{getattr(issame, 'shape', None)}."
            )
        if issame.shape[0] == 0:
            raise ValueError("a verification set needs at least one pair, got issame of length 0.")
        if images.shape[0] != 2 * issame.shape[0]:
            raise ValueError(
                f"images must hold two images per pair: {issame.shape[0]} pairs need "
                f"{2 * issame.shape[0]} images, got {images.shape[0]}."
            )

    @property
    def num_pairs(self) -> int:
        return int(self.issame.shape[0])


# ---------------------------------------------------------------------------------------------
# Reading and writing insightface's .bin files.
#
# A .bin is a pickle, and unpickling executes the file: even behind a restricted `find_class`, the
# allowed globals run with arguments of the file's choosing (numpy.dtype plus BUILD forges a dtype
# whose fields are object pointers, a memory-corruption primitive; bytes(10**15) asks for a
# petabyte). So `read_bin` never unpickles. `_OpcodeReader` reads the opcodes and their arguments,
# checking every declared size against the bytes the file has left, and `_InertMachine` runs them
# on inert values only: byte strings, text, ints, bools, None, tuples, lists and dicts. The few
# calls that Python 2, Python 3 and numpy write for byte strings, uint8 / int8 / bool /
# fixed-length-bytes arrays and numpy bool / bytes scalars are evaluated by the functions below,
# from checked arguments. No module is imported, no class is instantiated, no numpy dtype is built
# from the file's state.


class BinFileError(pickle.UnpicklingError, ValueError):
    """A .bin that `read_bin` refuses; the message names the file and what is wrong.

    Both a `pickle.UnpicklingError` and a `ValueError`: the two errors `read_bin` raised when it
    still unpickled.
    """


class _Refused(Exception):
    """Raised inside `_InertMachine`; `read_bin` adds the file and the byte position."""


#: What a .bin may hold, quoted when a file asks for anything else.
_ALLOWED = (
    "a verification .bin may only hold byte strings, bools and numpy uint8 / bool arrays "
    "(a pickle of (images, issame))"
)
#: numpy dtypes of the arrays and scalars a .bin may hold: raw bytes, never pointers.
_DTYPE_CODES = re.compile(r"[ui]1|b1|S[1-9][0-9]{0,8}")
_LATIN1 = ("latin1", "latin-1")
#: The values a numpy dtype's BUILD state may hold (no fields, sub-arrays or metadata).
_PLAIN = (bytes, str, int, type(None))


@dataclasses.dataclass(frozen=True)
class _Global:
    """A name the file referenced (GLOBAL / STACK_GLOBAL); only `_REDUCERS` gives it a meaning."""

    module: str
    name: str
    kind = "a global"


@dataclasses.dataclass(eq=False)
class _DType:
    """numpy.dtype(code) as declared by the file; `code` matches `_DTYPE_CODES`."""

    code: str
    built: bool = False
    kind = "a numpy dtype"


@dataclasses.dataclass(eq=False)
class _PendingArray:
    """numpy's `_reconstruct(ndarray, (0,), b'b')`, waiting for the BUILD that fills `array`."""

    array: np.ndarray | None = None
    kind = "an unfinished numpy array"


def _shown(value) -> str:
    """A short description of a value from the file, for messages."""
    if isinstance(value, (bytes, str, int)) and len(repr(value)) <= 40:
        return repr(value)
    return _describe(value)


def _latin1(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise _Refused("a byte string stored as text holds a character above U+00FF") from None


def _reduce_codecs_encode(args) -> bytes:
    """_codecs.encode(text, 'latin1'): how Python 3 pickles bytes at protocols 0 to 2."""
    if len(args) == 2 and isinstance(args[0], str) and args[1] in _LATIN1:
        return _latin1(args[0])
    raise _Refused("_codecs.encode may only turn a text into latin-1 bytes")


def _reduce_bytes(args) -> bytes:
    """bytes(...) / bytearray(...) as pickled: (), (bytes,) or (text, 'latin-1'); never (size,)."""
    if args == ():
        return b""
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytes(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in _LATIN1:
        return _latin1(args[0])
    raise _Refused(
        f"bytes / bytearray may only copy a byte string, not take the arguments "
        f"({', '.join(_shown(a) for a in args[:3])})"
    )


def _reduce_dtype(args) -> _DType:
    """numpy.dtype(code, align, copy), for the codes of `_DTYPE_CODES` only."""
    if len(args) != 3 or not all(isinstance(a, int) and a in (0, 1) for a in args[1:]):
        raise _Refused("numpy.dtype must be called as (code, align, copy)")
    code = args[0].decode("latin-1") if isinstance(args[0], bytes) else args[0]  # Python 2
    if not isinstance(code, str) or not _DTYPE_CODES.fullmatch(code):
        raise _Refused(
            f"numpy dtype {_shown(code)} is not allowed; arrays may only be uint8, "
            "int8, bool or fixed-length bytes"
        )
    return _DType(code)


def _reduce_reconstruct(args) -> _PendingArray:
    """numpy's _reconstruct(ndarray, (0,), b'b'): the empty array a BUILD then fills."""
    if (
        len(args) == 3
        and args[0] == _Global("numpy", "ndarray")
        and args[1] == (0,)
        and args[2] in (b"b", "b")
    ):
        return _PendingArray()
    raise _Refused("numpy's _reconstruct may only start a plain numpy.ndarray")


def _dtype_code(dtype) -> str:
    if not isinstance(dtype, _DType) or not dtype.built:
        raise _Refused(f"expected a numpy dtype, found {_describe(dtype)}")
    return dtype.code


def _array(raw, code: str, shape, fortran) -> np.ndarray:
    """The array numpy would rebuild from `raw`, which must hold exactly its bytes."""
    if not isinstance(raw, (bytes, bytearray)):
        raise _Refused(f"a numpy array's data must be a byte string, found {_describe(raw)}")
    if (
        not isinstance(shape, tuple)
        or len(shape) > 2
        or not all(isinstance(d, int) and 0 <= d <= max(len(raw), 1) for d in shape)
    ):
        raise _Refused(
            f"a numpy array's shape must be at most 2 sizes that fit its data, got {_shown(shape)}"
        )
    if not isinstance(fortran, int) or fortran not in (0, 1):
        raise _Refused("a numpy array's memory order must be a bool")
    needed = math.prod(shape) * (int(code[1:]) if code[0] == "S" else 1)
    if needed != len(raw):
        raise _Refused(
            f"a numpy array of shape {shape} and dtype {code} needs {needed} bytes, "
            f"its data holds {len(raw)}"
        )
    if code == "b1":  # any nonzero byte is True, as numpy's bool conversion has it
        flat = np.frombuffer(raw, np.uint8) != 0
    else:
        flat = np.frombuffer(raw, np.dtype(code))
    return flat.reshape(shape, order="F" if fortran else "C")


def _reduce_frombuffer(args) -> np.ndarray:
    """numpy's _frombuffer(buffer, dtype, shape, order): arrays at pickle protocol 5."""
    if len(args) != 4 or args[3] not in ("C", "F"):
        raise _Refused("numpy's _frombuffer must be called as (buffer, dtype, shape, 'C' or 'F')")
    return _array(args[0], _dtype_code(args[1]), args[2], args[3] == "F")


def _reduce_scalar(args):
    """numpy's scalar(dtype, raw): np.bool_ gives a bool, np.bytes_ bytes (trailing NULs cut)."""
    if len(args) != 2 or not isinstance(args[1], bytes):
        raise _Refused("numpy's scalar must be called as (dtype, bytes)")
    code, raw = _dtype_code(args[0]), args[1]
    if code == "b1" and len(raw) == 1:
        return raw != b"\x00"
    if code[0] == "S" and len(raw) == int(code[1:]):
        return raw.rstrip(b"\x00")
    raise _Refused(
        f"a numpy scalar may only be a bool or bytes, got dtype {code} with {len(raw)} bytes"
    )


#: The globals a .bin may name (numpy 1 wrote numpy.core, numpy 2 writes numpy._core), each with
#: the function that evaluates a call of it; numpy.ndarray is only an argument of _reconstruct.
_REDUCERS = {
    **{
        (f"{core}.multiarray", "_reconstruct"): _reduce_reconstruct
        for core in ("numpy.core", "numpy._core")
    },
    **{
        (f"{core}.numeric", "_frombuffer"): _reduce_frombuffer
        for core in ("numpy.core", "numpy._core")
    },
    **{(f"{core}.multiarray", "scalar"): _reduce_scalar for core in ("numpy.core", "numpy._core")},
    ("numpy", "dtype"): _reduce_dtype,
    ("numpy", "ndarray"): None,
    ("_codecs", "encode"): _reduce_codecs_encode,
    **{
        (module, name): _reduce_bytes
        for module in ("builtins", "__builtin__")
        for name in ("bytes", "bytearray")
    },
}


def _build_dtype(dtype: _DType, state) -> None:
    """Checks a dtype's BUILD state (byte order, sizes, flags) is plain; it is never applied."""
    if not isinstance(state, tuple) or not all(isinstance(x, _PLAIN) for x in state):
        raise _Refused(
            "a numpy dtype's state may only hold numbers and strings (no fields, "
            "sub-arrays or metadata)"
        )
    if len(state) > 1 and state[1] not in ("|", b"|"):
        raise _Refused(f"a one-byte numpy dtype has byte order '|', got {_shown(state[1])}")
    dtype.built = True


def _build_array(pending: _PendingArray, state) -> None:
    """Fills an array from its BUILD state: ([1,] shape, dtype, fortran, data)."""
    if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
        state = state[1:]
    if not isinstance(state, tuple) or len(state) != 4:
        raise _Refused("a numpy array's state must be (1, shape, dtype, fortran, data)")
    shape, dtype, fortran, raw = state
    pending.array = _array(raw, _dtype_code(dtype), shape, fortran)


class _InertMachine:
    """The pickle machine reduced to inert values (see the comment above `BinFileError`).

    `step(name, arg, pos)` runs one opcode of `_OpcodeReader`. `budget` is how many bytes
    the calls may still create: in a real file each new byte stands for about one byte of the
    file, so memo references that would re-create a large value many times are refused before
    they allocate.
    """

    def __init__(self, size: int):
        self.stack, self.marks, self.memo = [], [], {}
        self.size, self.budget, self.name = size, 2 * size + 2**20, ""

    # -- stack ----------------------------------------------------------------------------------

    def push(self, value):
        self.stack.append(value)

    def pop(self):
        if not self.stack or (self.marks and len(self.stack) == self.marks[-1]):
            raise _Refused("the pickle takes a value from an empty stack")
        return self.stack.pop()

    def top(self):
        if not self.stack or (self.marks and len(self.stack) == self.marks[-1]):
            raise _Refused("the pickle uses a value from an empty stack")
        return self.stack[-1]

    def pop_mark(self) -> list:
        if not self.marks:
            raise _Refused("the pickle closes a MARK it never opened")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def top_of(self, kind):
        target = self.top()
        if not isinstance(target, kind):
            raise _Refused(f"expected a {kind.__name__} to add to, found {_describe(target)}")
        return target

    def charge(self, value):
        self.budget -= value.nbytes if isinstance(value, np.ndarray) else len(value)
        if self.budget < 0:
            raise _Refused(
                f"the pickle would create more than twice the file's {self.size} bytes "
                "(memo references re-creating the same value)"
            )

    # -- opcodes --------------------------------------------------------------------------------

    def op_proto(self, version, pos):
        if not 0 <= version <= pickle.HIGHEST_PROTOCOL:
            raise _Refused(f"unknown pickle protocol {version}")

    def op_frame(self, length, pos):
        left = self.size - pos - 9  # the FRAME opcode and its 8-byte length
        if length > left:
            raise _Refused(
                f"a frame of {length} bytes is declared, the file has {left} left (truncated?)"
            )

    def op_mark(self, arg, pos):
        self.marks.append(len(self.stack))

    def op_value(self, value, pos):
        self.push(value)

    def op_bool(self, arg, pos):
        self.push(self.name == "NEWTRUE")

    def op_empty(self, arg, pos):
        self.push({"EMPTY_TUPLE": (), "EMPTY_LIST": [], "EMPTY_DICT": {}}[self.name])

    def op_tuple(self, arg, pos):
        size = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}.get(self.name)
        items = self.pop_mark() if size is None else [self.pop() for _ in range(size)][::-1]
        self.push(tuple(items))

    def op_list(self, arg, pos):
        self.push(self.pop_mark())

    def op_append(self, arg, pos):
        items = self.pop_mark() if self.name == "APPENDS" else [self.pop()]
        self.top_of(list).extend(items)

    def op_dict(self, arg, pos):
        items = self.pop_mark()
        self.push({})
        self.set_items(items)

    def op_setitem(self, arg, pos):
        items = self.pop_mark() if self.name == "SETITEMS" else [self.pop(), self.pop()][::-1]
        self.set_items(items)

    def set_items(self, items: list):
        target = self.top_of(dict)
        if len(items) % 2:
            raise _Refused("a dict needs keys and values in pairs")
        for key, value in zip(items[::2], items[1::2]):
            if not isinstance(key, (bytes, str, int, type(None))):
                raise _Refused(f"a dict key must be a string or a number, found {_describe(key)}")
            target[key] = value

    def op_put(self, index, pos):
        self.memo[len(self.memo) if self.name == "MEMOIZE" else index] = self.top()

    def op_get(self, index, pos):
        if index not in self.memo:
            raise _Refused(f"the pickle refers to memo entry {index}, which it never stored")
        self.push(self.memo[index])

    def op_global(self, arg, pos):
        if self.name == "GLOBAL":
            module, name = arg
        else:
            name, module = self.pop(), self.pop()
            if not (isinstance(module, str) and isinstance(name, str)):
                raise _Refused("STACK_GLOBAL needs a module and a name")
        if (module, name) not in _REDUCERS:
            raise _Refused(f"refused global {module[:80]}.{name[:80]}: {_ALLOWED}")
        self.push(_Global(module, name))

    def op_reduce(self, arg, pos):
        args, func = self.pop(), self.pop()
        reducer = _REDUCERS.get((func.module, func.name)) if isinstance(func, _Global) else None
        if reducer is None or not isinstance(args, tuple):
            raise _Refused(
                f"only numpy arrays and byte strings may be rebuilt, not by calling "
                f"{_describe(func)}"
            )
        value = reducer(args)
        if (
            isinstance(value, bytes)
            and not any(value is a for a in args)
            or (isinstance(value, np.ndarray) and value.dtype == bool)
        ):
            self.charge(value)  # new memory; arrays of other dtypes are views of the file's bytes
        self.push(value)

    def op_build(self, arg, pos):
        state, target = self.pop(), self.top()
        if isinstance(target, _DType) and not target.built:
            _build_dtype(target, state)
        elif isinstance(target, _PendingArray) and target.array is None:
            _build_array(target, state)
            if target.array.dtype == bool:  # new memory; the other dtypes view the file's bytes
                self.charge(target.array)
        else:
            raise _Refused(
                f"BUILD may only set up a new numpy array or dtype, not {_describe(target)}"
            )

    def step(self, name: str, arg, pos: int):
        """Runs one opcode; `_Refused` for any opcode outside `_OPCODES` and for any misuse."""
        method = _OPCODES.get(name)
        if method is None:
            raise _Refused(f"the pickle opcode {name} is not allowed: {_ALLOWED}")
        self.name = name
        getattr(self, method)(arg, pos)

    def result(self):
        """The value STOP returns."""
        return self.pop()


def _opcodes(method: str, *names: str) -> dict:
    return {name: method for name in names}


#: The opcodes a .bin may use, each with the `_InertMachine` method that runs it. Everything else
#: (INST, OBJ, NEWOBJ, EXT*, PERSID, out-of-band buffers, floats, sets, ...) is refused.
_OPCODES = {
    **_opcodes("op_proto", "PROTO"),
    **_opcodes("op_frame", "FRAME"),
    **_opcodes("op_mark", "MARK"),
    **_opcodes(
        "op_value",
        "NONE",
        "INT",
        "BININT",
        "BININT1",
        "BININT2",
        "LONG1",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "SHORT_BINBYTES",
        "BINBYTES",
        "BINBYTES8",
        "BYTEARRAY8",
        "UNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
    ),
    **_opcodes("op_bool", "NEWTRUE", "NEWFALSE"),
    **_opcodes("op_empty", "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT"),
    **_opcodes("op_tuple", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"),
    **_opcodes("op_list", "LIST"),
    **_opcodes("op_append", "APPEND", "APPENDS"),
    **_opcodes("op_dict", "DICT"),
    **_opcodes("op_setitem", "SETITEM", "SETITEMS"),
    **_opcodes("op_put", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"),
    **_opcodes("op_get", "GET", "BINGET", "LONG_BINGET"),
    **_opcodes("op_global", "GLOBAL", "STACK_GLOBAL"),
    **_opcodes("op_reduce", "REDUCE"),
    **_opcodes("op_build", "BUILD"),
}


class _OpcodeReader:
    """The opcodes of a pickle held in `data`, with their arguments, as `pickle` reads them.

    Every length is checked against the bytes left in the file before anything is sliced, so a
    declared size can never allocate more than the file holds. Python 2 str (STRING, BINSTRING,
    SHORT_BINSTRING) is read as bytes, as `pickle.load(..., encoding='bytes')` does.
    """

    _NAMES = {op.code.encode("latin-1"): op.name for op in pickletools.opcodes}
    _INT_LINE = re.compile(rb"[-+]?[0-9]{1,20}")

    def __init__(self, data: bytes):
        self.data, self.pos, self.start = data, 0, 0  # start: the current opcode's position

    def take(self, size: int, what: str) -> bytes:
        left = len(self.data) - self.pos
        if size > left:
            raise _Refused(
                f"{what} of {size} bytes is declared, the file has {left} left (truncated?)"
            )
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size, "a number"), "little")

    def sized(self, size_bytes: int, what: str, signed: bool = False) -> bytes:
        size = int.from_bytes(self.take(size_bytes, "a length"), "little", signed=signed)
        if size < 0:
            raise _Refused(f"{what} of negative length {size}")
        return self.take(size, what)

    def line(self) -> bytes:
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            raise _Refused("a text argument has no end of line (truncated?)")
        line, self.pos = self.data[self.pos : end], end + 1
        return line

    def int_line(self):
        line = self.line().strip()
        if line in (b"00", b"01"):  # protocol 0's False and True
            return line == b"01"
        if not self._INT_LINE.fullmatch(line):
            raise _Refused(f"expected a decimal number, found {_shown(line)}")
        return int(line)

    def string_line(self) -> bytes:
        line = self.line().rstrip(b"\r")
        if len(line) < 2 or line[:1] != line[-1:] or line[:1] not in (b"'", b'"'):
            raise _Refused("a STRING argument must be quoted")
        try:
            return codecs.escape_decode(line[1:-1])[0]
        except ValueError as e:
            raise _Refused(f"a STRING argument has a bad escape ({e})") from None

    def text(self, data: bytes, codec: str = "utf-8") -> str:
        try:
            return str(data, codec, "surrogatepass" if codec == "utf-8" else "strict")
        except UnicodeDecodeError as e:
            raise _Refused(f"a text argument is not {codec} ({e.reason})") from None

    def argument(self, name: str):
        """Reads the argument of opcode `name` (None for opcodes without one)."""
        if name in ("PROTO", "BININT1", "BINPUT", "BINGET"):
            return self.uint(1)
        if name == "BININT2":
            return self.uint(2)
        if name in ("LONG_BINPUT", "LONG_BINGET"):
            return self.uint(4)
        if name == "BININT":
            return int.from_bytes(self.take(4, "a number"), "little", signed=True)
        if name == "FRAME":
            return self.uint(8)
        if name == "LONG1":
            return int.from_bytes(self.sized(1, "an integer"), "little", signed=True)
        if name in ("INT", "PUT", "GET"):
            return self.int_line()
        if name == "STRING":
            return self.string_line()
        if name == "UNICODE":
            return self.text(self.line(), "raw-unicode-escape")
        if name == "GLOBAL":
            return self.text(self.line()), self.text(self.line())
        sizes = {
            "SHORT_BINSTRING": 1,
            "SHORT_BINBYTES": 1,
            "SHORT_BINUNICODE": 1,
            "BINSTRING": 4,
            "BINBYTES": 4,
            "BINUNICODE": 4,
            "BINBYTES8": 8,
            "BINUNICODE8": 8,
            "BYTEARRAY8": 8,
        }
        if name in sizes:
            data = self.sized(sizes[name], f"a {name} argument", signed=name == "BINSTRING")
            if name.endswith("UNICODE") or name.endswith("UNICODE8"):
                return self.text(data)
            return bytearray(data) if name == "BYTEARRAY8" else data
        return None

    def opcodes(self):
        """Yields (name, argument, position) up to and including STOP."""
        while True:
            pos = self.start = self.pos
            code = self.data[pos : pos + 1]
            if not code:
                raise _Refused("the pickle ends before its STOP opcode (truncated?)")
            name = self._NAMES.get(code)
            if name is None:
                raise _Refused(
                    f"byte 0x{code.hex()} is not a pickle opcode; this is not a .bin "
                    "pickle, or a corrupt one"
                )
            self.pos += 1
            if name not in _OPCODES and name != "STOP":
                raise _Refused(f"the pickle opcode {name} is not allowed: {_ALLOWED}")
            yield name, self.argument(name), pos
            if name == "STOP":
                return


def _unpickle_inert(data: bytes, path) -> object:
    """The value a pickle of inert values (see `_InertMachine`) holds; `BinFileError` otherwise."""
    machine, reader = _InertMachine(len(data)), _OpcodeReader(data)
    try:
        for name, arg, pos in reader.opcodes():
            if name == "STOP":
                return machine.result()
            machine.step(name, arg, pos)
    except _Refused as e:
        raise BinFileError(f"{path}: byte {reader.start} of {len(data)}: {e}.") from None
    raise AssertionError("unreachable: opcodes() ends with STOP or raises")


def _as_bytes(item) -> bytes | None:
    """The bytes of one encoded image as a .bin stores it, or None for anything else.

    bytes, bytearray, `np.bytes_`, a uint8 / int8 array of shape [N] or [N, 1] (what
    `cv2.imencode` returns, which insightface's alignment scripts store as they are) or a
    one-element bytes array.
    """
    if isinstance(item, (bytes, bytearray, np.bytes_)):
        return bytes(item)
    if isinstance(item, np.ndarray):
        if item.dtype in (np.uint8, np.int8) and (item.ndim == 1 or item.shape[1:] == (1,)):
            return item.tobytes()
        if item.dtype.kind == "S" and item.size == 1:
            return bytes(item.reshape(()).item())
    return None


def _describe(obj) -> str:
    if isinstance(obj, np.ndarray):
        return f"numpy array {obj.dtype} {obj.shape}"
    if isinstance(obj, (list, tuple)):
        return f"{type(obj).__name__} of length {len(obj)}"
    if isinstance(obj, _Global):
        return f"the global {obj.module[:80]}.{obj.name[:80]}"
    return getattr(type(obj), "kind", type(obj).__name__)


def _finished(value):
    """`value`, with a filled `_PendingArray` replaced by its array."""
    if isinstance(value, _PendingArray) and value.array is not None:
        return value.array
    return value


def _check_bin_structure(obj, path) -> tuple[list[bytes], np.ndarray]:
    """(2P encoded images, bool [P]) from the unpickled value; `BinFileError` for anything else."""
    where = f"{path}: expected a pickled (images, issame) pair"
    obj = _finished(obj)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise BinFileError(f"{where}, found {_describe(obj)}.")
    bins, issame_list = (_finished(x) for x in obj)
    if not isinstance(bins, (list, tuple, np.ndarray)):
        raise BinFileError(
            f"{where}; images must be a sequence of byte strings, found {_describe(bins)}."
        )
    if isinstance(issame_list, np.ndarray):
        if issame_list.dtype != bool or issame_list.ndim != 1:
            raise BinFileError(
                f"{where}; issame must be a sequence of bools, found {_describe(issame_list)}."
            )
        issame = issame_list.copy()
    elif isinstance(issame_list, (list, tuple)):
        bad = [i for i, x in enumerate(issame_list) if not isinstance(x, (bool, np.bool_))]
        if bad:
            raise BinFileError(
                f"{where}; issame must be a sequence of bools, found "
                f"{_describe(issame_list[bad[0]])} at index {bad[0]}."
            )
        issame = np.asarray(issame_list, dtype=bool).reshape(-1)
    else:
        raise BinFileError(
            f"{where}; issame must be a sequence of bools, found {_describe(issame_list)}."
        )
    if len(issame) == 0:
        raise BinFileError(f"{path}: the file holds no pairs (issame is empty).")
    if len(bins) != 2 * len(issame):
        raise BinFileError(
            f"{path}: {len(issame)} pairs need {2 * len(issame)} images, the file "
            f"holds {len(bins)}."
        )
    encoded, converted = [], {}  # an array referenced many times is copied once
    for i, item in enumerate(bins):
        item = _finished(item)
        data = item if type(item) is bytes else converted.get(id(item))
        if data is None:
            data = converted[id(item)] = _as_bytes(item)
        if data is None:
            raise BinFileError(
                f"{where}; image {i} must be a byte string, found {_describe(item)}."
            )
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


def _decode_all(
    encoded: Sequence[bytes], image_size: int, name: str, wheres: Sequence[str], progress: bool
) -> np.ndarray:
    images = np.empty((len(encoded), image_size, image_size, 3), np.uint8)
    show = progress and len(encoded) >= PROGRESS_MIN_IMAGES
    for i, data in enumerate(
        tqdm(encoded, desc=f"decoding {name}", unit="img", disable=not show, leave=False)
    ):
        images[i] = _decode(data, image_size, wheres[i])
    return images


def _check_image_size(image_size) -> None:
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, (int, np.integer))
        or image_size < 1
    ):
        raise ValueError(f"image_size must be a positive int, got {image_size!r}.")


def read_bin(path) -> tuple[list[bytes], np.ndarray]:
    """The encoded images and the bool [P] pair labels of an insightface .bin, without decoding.

    The file is a pickle of `(bins, issame_list)`: `bins` holds 2P encoded images (JPEG or PNG:
    `bytes` in the published files, which Python 2 wrote at protocol 2; also bytearray, `np.bytes_`
    and the uint8 arrays of `cv2.imencode`), `issame_list` P bools (a list, or a numpy bool array).
    The file is never unpickled: its opcodes are checked and evaluated by `_InertMachine`, which
    builds only byte strings, bools, lists, tuples and uint8 / int8 / bool / bytes numpy arrays,
    and checks every declared size against the bytes the file holds before it allocates.

    Raises:
      FileNotFoundError: no such file.
      BinFileError (a `pickle.UnpicklingError` and a `ValueError`): anything else than such a
        pickle: another global, class or opcode, a size past the end of the file (truncated), the
        wrong structure or unequal lengths, naming the file (and the byte, for the pickle).
    """
    path = pathlib.Path(path)
    return _check_bin_structure(_unpickle_inert(path.read_bytes(), path), path)


def load_bin(
    path, *, image_size: int = 112, name: str | None = None, progress: bool = True
) -> VerificationSet:
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
      BinFileError (a pickle.UnpicklingError and a ValueError): see `read_bin`; ValueError also
        for an image that does not decode, naming the file and its index.
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
        raise ValueError(
            f"issame must hold bools, got {type(issame[bad[0]]).__name__} at index {bad[0]}."
        )
    if not issame:
        raise ValueError("issame must hold at least one pair, got an empty sequence.")
    encoded = []
    for i, item in enumerate(encoded_images):
        data = _as_bytes(item)
        if data is None:
            raise ValueError(f"encoded_images[{i}] must be bytes, got {_describe(item)}.")
        encoded.append(data)
    if len(encoded) != 2 * len(issame):
        raise ValueError(
            f"{len(issame)} pairs need {2 * len(issame)} encoded_images, got {len(encoded)}."
        )
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
            raise ValueError(
                f"{where}: expected 'name i j' or 'name1 i name2 j', got "
                f"{len(tokens)} fields: {' '.join(tokens)!r}."
            )
        paths = []
        for person, index in zip(names, indices):
            if not index.isdigit() or int(index) < 1:
                raise ValueError(
                    f"{where}: the image number must be a positive integer, got {index!r}."
                )
            path = image_root / person / f"{person}_{int(index):04d}.{extension}"
            if not path.is_file():
                raise ValueError(f"{where}: missing image {path}.")
            paths.append(path)
        pairs.append((paths[0], paths[1], issame))
    if not pairs:
        raise ValueError(f"{pairs_path}: no pairs after the header line.")
    if expected is not None and len(pairs) != expected:
        raise ValueError(
            f"{pairs_path}, line {first_number}: the header "
            f"{' '.join(first)!r} announces {expected} pairs, the file lists "
            f"{len(pairs)}."
        )
    return pairs


def load_pairs(
    pairs_path,
    image_root,
    *,
    image_size: int = 112,
    name: str | None = None,
    extension: str = "jpg",
    progress: bool = True,
) -> VerificationSet:
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
        raise ValueError(
            f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}."
        )
    if (
        isinstance(num_pairs, bool)
        or not isinstance(num_pairs, (int, np.integer))
        or num_pairs < 2
        or num_pairs % 2
    ):
        raise ValueError(f"num_pairs must be an even int >= 2, got {num_pairs!r}.")
    half = int(num_pairs) // 2
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    counts = counts.astype(np.int64)
    pairs_per_class = counts * (counts - 1) // 2
    total_same = int(pairs_per_class.sum())
    n = labels.shape[0]
    total_diff = n * (n - 1) // 2 - total_same
    if total_same < half:
        raise ValueError(
            f"labels allow {total_same} distinct same-identity pairs (identities "
            f"with two or more images: {int(np.sum(counts >= 2))}), {half} needed "
            f"for num_pairs={num_pairs}."
        )
    if total_diff < half:
        raise ValueError(
            f"labels allow {total_diff} distinct different-identity pairs "
            f"(identities: {len(classes)}), {half} needed for "
            f"num_pairs={num_pairs}."
        )
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


def embed_pairs(
    embed_fn: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    *,
    batch_size: int,
    progress: bool = True,
) -> np.ndarray:
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
    if (
        images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[-1] != 3
        or images.shape[0] == 0
    ):
        raise ValueError(
            f"images must be uint8 [N, S, S, 3] with N >= 1, got {images.dtype} {images.shape}."
        )
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    n = images.shape[0]
    out = None
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="embedding", unit="batch", disable=not progress, leave=False):
        batch = images[start : start + batch_size]
        count = batch.shape[0]
        if count < batch_size:
            pad = np.repeat(images[:1], batch_size - count, axis=0)
            batch = np.concatenate([batch, pad])
        total = 0
        for x in (batch, np.ascontiguousarray(batch[:, :, ::-1])):
            e = np.asarray(embed_fn(x))
            if e.ndim != 2 or e.shape[0] != batch_size:
                raise ValueError(
                    f"embed_fn must return [batch_size={batch_size}, D], got shape {e.shape}."
                )
            if not np.all(np.isfinite(e)):
                raise ValueError(
                    f"embed_fn returned non-finite values for images {start}..{start + count - 1}."
                )
            total = total + e.astype(np.float64)
        if out is None:
            out = np.empty((n, total.shape[1]), np.float32)
        out[start : start + count] = _l2_normalize(total[:count], "the flip-summed embedding")
    return out


# ---------------------------------------------------------------------------------------------
# The protocol.


def fold_bounds(num_pairs: int, num_folds: int) -> list[tuple[int, int]]:
    """[(start, stop)] of `num_folds` contiguous folds over the pairs in order.

    As sklearn's `KFold(n_splits, shuffle=False)`: the first num_pairs % num_folds folds hold one
    pair more than the others.
    """
    sizes = np.full(num_folds, num_pairs // num_folds)
    sizes[: num_pairs % num_folds] += 1
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


def evaluate(
    embeddings,
    issame,
    *,
    num_folds: int = 10,
    far_target: float = 1e-3,
    thresholds: np.ndarray | None = None,
) -> dict:
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
    if (
        not (np.issubdtype(e.dtype, np.floating) or np.issubdtype(e.dtype, np.integer))
        or e.dtype == bool
    ):
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
        raise ValueError(
            f"issame must have shape [P] = ({num_pairs},) for {e.shape[0]} "
            f"embeddings, got {same.shape}."
        )
    if not same.any() or same.all():
        raise ValueError("issame must hold at least one same pair and one different pair.")
    if (
        isinstance(num_folds, bool)
        or not isinstance(num_folds, (int, np.integer))
        or not 2 <= num_folds <= num_pairs
    ):
        raise ValueError(f"num_folds must be an int in [2, P={num_pairs}], got {num_folds!r}.")
    if not 0 < far_target <= 1:
        raise ValueError(f"far_target must be in (0, 1], got {far_target!r}.")
    grid = THRESHOLDS if thresholds is None else np.asarray(thresholds, np.float64)
    if (
        grid.ndim != 1
        or grid.size == 0
        or not np.all(np.isfinite(grid))
        or np.any(np.diff(grid) <= 0)
    ):
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
