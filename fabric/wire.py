"""What travels on a link (`fabric.link`): messages of plain data, and errors.

Messages. A message is a dict with str keys whose values are None, bool, int (64-bit), float,
str, bytes, lists, tuples, dicts with str keys and numpy arrays (dtypes in `ARRAY_DTYPES`), nested
freely. On the wire it is one msgpack map; an array is a msgpack ExtType (`ARRAY_EXT`) carrying
its dtype code, its shape and its raw little-endian bytes, rebuilt with `np.frombuffer`. Decoding
never unpickles, never evaluates, never imports: anything outside the whitelist is refused with a
`WireError` naming what is wrong. What comes back differs from what was sent only in:
  - tuples come back as lists; bytearray and memoryview come back as bytes;
  - numpy scalars (np.float32(1), np.int64(3), np.bool_) come back as Python float, int, bool;
  - arrays come back C-contiguous, little-endian and READ-ONLY (views of the received bytes:
    `np.array(a)` or `a.copy()` for a writable one), with the same dtype, shape and bits;
  - msgpack's own `ExtType` / `Timestamp` objects are not values: the far end refuses the former
    and reads the latter as int nanoseconds (nothing in the protocol sends them).

Errors crossing a link travel as `error_message(exc)` and come back as `remote_error(d)`:
builtin types from `REMOTE_ERROR_TYPES` and any class passed to `register_error` are rebuilt as
themselves, anything else as `RemoteError` naming the original type.
"""
from __future__ import annotations

import math
import struct
import threading

import msgpack
import numpy as np

RECV_CHUNK_BYTES = 64 * 1024
"""Bytes asked of the socket per read: frames up to this size (and several of them) arrive in one
call and are sent with their header in one call; larger ones are read straight into their own
buffer and sent without copying the body."""
MAX_ARRAY_NDIM = 32
"""Most dimensions a received array may claim (numpy 1.x's own limit)."""
MAX_ERROR_MESSAGE_CHARS = 10_000
"""Longest error message sent over a link (a runaway repr should not fill a frame)."""


ARRAY_EXT = 1
"""msgpack ExtType code of a numpy array: payload = dtype code (u8), ndim (u8), shape
(ndim x u64 little-endian), then the raw little-endian bytes in C order."""
_ARRAY_HEAD = struct.Struct("<BB")
_ARRAY_HEADS = [struct.Struct(f"<BB{n}Q") for n in range(MAX_ARRAY_NDIM + 1)]
_SHAPES = [struct.Struct(f"<{n}Q") for n in range(MAX_ARRAY_NDIM + 1)]
ARRAY_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"), 2: np.dtype("<f8"),
    3: np.dtype("i1"), 4: np.dtype("<i2"), 5: np.dtype("<i4"), 6: np.dtype("<i8"),
    7: np.dtype("u1"), 8: np.dtype("<u2"), 9: np.dtype("<u4"),
    11: np.dtype("?"),
}
"""The array dtypes a link carries, by wire code: float32, float64, int8-64, uint8-32, bool and
ml_dtypes.bfloat16 (the weights' storage type, `BF16_CODE`: added by `wire_dtypes` on first use).
float16, uint64, complex, object, str, structured and datetime arrays are refused (nothing in the
protocol uses them)."""
BF16_CODE = 12
"""Wire code of ml_dtypes.bfloat16. Its table entry is added when a process first sends or receives
one: importing ml_dtypes costs ~0.6 CPU-s, which every device actor would pay at start-up, and only
full numerics with bfloat16 weights move bfloat16 arrays."""
_DTYPE_CODES = {dt: code for code, dt in ARRAY_DTYPES.items()}
_DTYPE_NAMES = ", ".join([dt.name for dt in ARRAY_DTYPES.values()] + ["bfloat16"])


def wire_dtypes() -> dict[int, np.dtype]:
    """Every dtype a link carries, by wire code, bfloat16 included (importing ml_dtypes)."""
    if BF16_CODE not in ARRAY_DTYPES:
        import ml_dtypes

        bf16 = np.dtype(ml_dtypes.bfloat16)
        _DTYPE_CODES[bf16] = BF16_CODE  # the encoder's table first: a reader of ARRAY_DTYPES finds both
        ARRAY_DTYPES[BF16_CODE] = bf16
    return ARRAY_DTYPES


class WireError(ValueError):
    """A value cannot travel on a link (sending), or received bytes are not a valid message."""


class RemoteError(RuntimeError):
    """An exception from the other end of a link whose type this end does not rebuild; the message
    starts with the original type's name, kept in `remote_type`."""

    def __init__(self, message: str, remote_type: str = "RemoteError") -> None:
        super().__init__(message)
        self.remote_type = remote_type


# --- messages ---------------------------------------------------------------------------------

def _encode_other(obj, _ndarray=np.ndarray, _codes=_DTYPE_CODES, _heads=_ARRAY_HEADS):
    """msgpack's hook for what it does not pack itself: arrays and numpy scalars; else refused."""
    if type(obj) is _ndarray or (isinstance(obj, _ndarray) and not isinstance(obj, np.ma.MaskedArray)):
        code = _codes.get(obj.dtype)
        if code is None:
            obj, code = _wire_dtype(obj)
        ndim = obj.ndim
        if ndim > MAX_ARRAY_NDIM:
            raise WireError(f"cannot send an array of {ndim} dimensions (at most {MAX_ARRAY_NDIM})")
        head = _heads[ndim].pack(code, ndim, *obj.shape)
        if obj.nbytes > RECV_CHUNK_BYTES and obj.flags.c_contiguous:  # one copy, not two
            data = b"".join((head, memoryview(obj.reshape(-1).view(np.uint8))))
        else:
            data = head + obj.tobytes()
        # msgpack.ExtType without its Python-level argument checks (a microsecond per array)
        return tuple.__new__(msgpack.ExtType, (ARRAY_EXT, data))
    if isinstance(obj, int):  # msgpack hands over only ints it cannot pack
        raise WireError(f"cannot send the int {obj}: outside the 64-bit range a link carries")
    if isinstance(obj, np.generic):
        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating) and obj.dtype.itemsize <= 8:
            return float(obj)
    raise WireError(f"cannot send a {type(obj).__module__}.{type(obj).__qualname__} on a link: "
                    "use None, bool, int, float, str, bytes, list, tuple, dict with str keys "
                    f"or a numpy array of {_DTYPE_NAMES}")


def _wire_dtype(a: np.ndarray) -> tuple[np.ndarray, int]:
    """`a` in a dtype the wire carries (big-endian -> little-endian) and its code; else refused."""
    dt = a.dtype
    if dt.name == "bfloat16" and BF16_CODE not in ARRAY_DTYPES:  # only ml_dtypes' has this name
        wire_dtypes()
        if _DTYPE_CODES.get(dt) == BF16_CODE:
            return a, BF16_CODE
    code = _DTYPE_CODES.get(dt.newbyteorder("<")) if dt.byteorder == ">" else None
    if code is None:
        raise WireError(f"cannot send an array of dtype {dt} on a link: use one of {_DTYPE_NAMES}")
    return a.astype(ARRAY_DTYPES[code]), code


_CONTAINERS = (dict, list, tuple)


def _check_keys(obj, where: str) -> None:
    """Refuse dict keys that are not str anywhere in `obj` (msgpack would pack them; the far end
    would refuse them, failing there instead of here)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if type(k) is not str:
                raise WireError(f"cannot send {where}: key {k!r} ({type(k).__name__}) is not a str")
            if isinstance(v, _CONTAINERS):
                _check_keys(v, f"{where}[{k!r}]")
    else:
        for i, v in enumerate(obj):
            if isinstance(v, _CONTAINERS):
                _check_keys(v, f"{where}[{i}]")


_packers = threading.local()  # a packer per thread and mode: reused, not rebuilt per message


def thread_packer(autoreset: bool) -> msgpack.Packer:
    """This thread's packer: `autoreset` True returns each message's bytes (`encode`); False keeps
    them in the packer's buffer until reset (`Link.send`: a large body sent from it, not copied)."""
    packer = getattr(_packers, "bytes" if autoreset else "buffer", None)
    if packer is None:
        packer = msgpack.Packer(default=_encode_other, use_bin_type=True, autoreset=autoreset)
        setattr(_packers, "bytes" if autoreset else "buffer", packer)
    return packer


def pack(packer: msgpack.Packer, msg: dict):
    """`packer.pack(msg)` after `encode`'s checks, its failures as WireError."""
    if not isinstance(msg, dict):
        raise WireError(f"a link message is a dict, not a {type(msg).__name__}")
    try:
        _check_keys(msg, "the message")
    except RecursionError as e:
        raise WireError("cannot send the message: nested too deeply") from e
    try:
        return packer.pack(msg)
    except WireError:
        raise
    except (OverflowError, ValueError, TypeError) as e:  # an int past 64 bits, nesting past 512
        raise WireError(f"cannot send the message: {e}") from e


def encode(msg: dict) -> bytes:
    """`msg` as one frame's body (what `Link.send_bytes` takes: encode once, send to several
    ports). Raises `WireError` naming the first value that cannot travel."""
    return pack(thread_packer(True), msg)


def _decode_ext(code: int, data: bytes) -> np.ndarray:
    if code != ARRAY_EXT:
        raise WireError(f"msgpack extension type {code} is not one a link carries (only arrays, {ARRAY_EXT})")
    if len(data) < _ARRAY_HEAD.size:
        raise WireError("array header truncated")
    dcode, ndim = _ARRAY_HEAD.unpack_from(data)
    dtype = ARRAY_DTYPES.get(dcode)
    if dtype is None and dcode == BF16_CODE:
        dtype = wire_dtypes()[BF16_CODE]
    if dtype is None:
        raise WireError(f"array dtype code {dcode} is not one a link carries")
    if ndim > MAX_ARRAY_NDIM:
        raise WireError(f"array claims {ndim} dimensions (at most {MAX_ARRAY_NDIM})")
    start = _ARRAY_HEAD.size + 8 * ndim
    if len(data) < start:
        raise WireError("array shape truncated")
    shape = _SHAPES[ndim].unpack_from(data, _ARRAY_HEAD.size)
    count = math.prod(shape)
    if count * dtype.itemsize != len(data) - start:
        raise WireError(f"array of {dtype} {shape} needs {count * dtype.itemsize} bytes, "
                        f"the frame carries {len(data) - start}")
    try:  # positional: numpy's keyword path costs a microsecond more
        array = np.frombuffer(data, dtype, count, start)
        return array if ndim == 1 else array.reshape(shape)
    except ValueError as e:  # a zero-size array with an absurd dimension
        raise WireError(f"array of {dtype} {shape} cannot be built: {e}") from e


def decode(blob) -> dict:
    """The message in one frame's body (bytes-like); raises `WireError` for anything that is not
    a valid message: bad msgpack or UTF-8, trailing bytes, a non-map top level, a map key that is
    not a str (bytes keys, which `encode` never writes, pass msgpack's strict_map_key), an unknown
    extension or dtype, an array whose bytes do not match its shape. Never runs code; msgpack's
    reserved timestamp extension, which `encode` never writes, comes back as int nanoseconds."""
    try:
        msg = msgpack.unpackb(blob, ext_hook=_decode_ext, raw=False, strict_map_key=True, timestamp=2)
    except WireError:
        raise
    except Exception as e:  # noqa: BLE001 - msgpack raises several types for malformed input
        raise WireError(f"not a valid link message: {type(e).__name__}: {e}") from e
    if not isinstance(msg, dict):
        raise WireError(f"a link message is a map, this frame holds a {type(msg).__name__}")
    return msg


# --- errors -----------------------------------------------------------------------------------

REMOTE_ERROR_TYPES = (ValueError, TypeError, KeyError, IndexError, RuntimeError, TimeoutError,
                      AssertionError, MemoryError, ConnectionError)
"""Builtin exception types rebuilt as themselves when they come back over a link."""
_error_types: dict[str, type[BaseException]] = {c.__name__: c for c in (*REMOTE_ERROR_TYPES, RemoteError)}
_error_lock = threading.Lock()


def register_error(cls: type[BaseException]) -> type[BaseException]:
    """Let `remote_error` rebuild `cls` (by its class name; built with one message argument).
    Returns `cls` (usable as a decorator). Registering again, or a reloaded module's class of the
    same module and qualified name, is harmless; ValueError if another class has the name."""
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        raise TypeError(f"register_error takes an Exception subclass, not {cls!r}")
    with _error_lock:
        known = _error_types.setdefault(cls.__name__, cls)
        if known is not cls and known not in (*REMOTE_ERROR_TYPES, RemoteError) and \
                (known.__module__, known.__qualname__) == (cls.__module__, cls.__qualname__):
            known = _error_types[cls.__name__] = cls  # the same class, its module reloaded
    if known is not cls:
        raise ValueError(f"an error type named {cls.__name__!r} is already registered "
                         f"({known.__module__}.{known.__qualname__})")
    return cls


def error_message(exc: BaseException) -> dict:
    """`exc` as a link value: {"type": its class name, "message": its message}."""
    args = exc.args
    message = args[0] if len(args) == 1 and isinstance(args[0], str) else str(exc)
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[:MAX_ERROR_MESSAGE_CHARS] + " [...]"
    return {"type": type(exc).__name__, "message": message}


def remote_error(d: dict) -> BaseException:
    """The exception an `error_message` describes, to raise here: its own type if builtin-listed
    (`REMOTE_ERROR_TYPES`) or registered, else `RemoteError("<type>: <message>")`."""
    if not isinstance(d, dict) or not isinstance(d.get("type"), str) or not isinstance(d.get("message"), str):
        return RemoteError(f"malformed error report from the other end of a link: {d!r:.200}")
    name, message = d["type"], d["message"]
    cls = _error_types.get(name)
    if cls is not None:
        try:
            return cls(message)
        except Exception:  # noqa: BLE001 - a registered class with another constructor
            pass
    return RemoteError(f"{name}: {message}", name)
