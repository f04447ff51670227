"""The bytes of openpi's websocket protocol: msgpack, with numpy arrays as tagged maps.

    from harness.serving import wire
    data = wire.pack({"agentview": image, "prompt": "put carrot on plate"})   # bytes for one frame
    wire.unpack(data)["agentview"]                                            # (H, W, 3) uint8 again

The encoding is the one of ``openpi_client.msgpack_numpy``, so either side can be openpi's own code: an
``np.ndarray`` travels as ``{b"__ndarray__": True, b"data": its bytes in C order, b"dtype": dtype.str (e.g.
"<f4"), b"shape": [...]}``, a numpy scalar as ``{b"__npgeneric__": True, b"data": value, b"dtype": dtype.str}``
(keys are msgpack binaries, not strings); everything else is plain msgpack (``str`` as str, ``bytes`` as bin,
tuples as lists). Object, void and complex arrays are refused (no pickle ever crosses the wire).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

REFUSED_KINDS = ("O", "V", "c")  # numpy dtype kinds that have no portable byte encoding


def _encode(obj: Any) -> Any:
    """msgpack ``default`` hook: numpy arrays and scalars as tagged maps; anything else is an error."""
    if isinstance(obj, (np.ndarray, np.generic)):
        if obj.dtype.kind in REFUSED_KINDS:
            raise TypeError(f"cannot send a numpy value of dtype {obj.dtype}; send numbers, bools or strings")
        if isinstance(obj, np.ndarray):
            return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send a {type(obj).__name__} over the wire; send numpy arrays, numbers or strings")


def _decode(obj: dict) -> Any:
    """msgpack ``object_hook``: tagged maps back to writable numpy arrays and scalars."""
    if b"__ndarray__" in obj:
        dtype = np.dtype(obj[b"dtype"])
        if dtype.kind in REFUSED_KINDS:
            raise ValueError(f"refusing an array of dtype {dtype} from the wire")
        shape = tuple(int(n) for n in obj[b"shape"])
        data = obj[b"data"]
        if len(data) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ValueError(f"array of shape {shape} and dtype {dtype} needs "
                             f"{int(np.prod(shape)) * dtype.itemsize} bytes, got {len(data)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


def pack(obj: Any) -> bytes:
    """One frame's bytes for ``obj`` (maps, lists, numbers, strings, numpy arrays and scalars)."""
    return msgpack.packb(obj, default=_encode)


def unpack(data: bytes) -> Any:
    """The object packed in ``data``; arrays come back writable, with their dtype and shape."""
    return msgpack.unpackb(data, object_hook=_decode)
