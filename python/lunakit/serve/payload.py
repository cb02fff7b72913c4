"""Decoding `/v1/classify` bodies into a crop array, refusing anything malformed with a 4xx.

Two encodings of the same thing, N crops of float32 HU in [I, R, C] order, little-endian:
- JSON `{"shape": [N, 32, 48, 48], "data": "<base64>"}`;
- the raw bytes (`application/octet-stream`) with the shape in an `X-Shape: N,32,48,48` header.
A shape of [N, 1, 32, 48, 48] (with the channel) is accepted too.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any, Sequence

import numpy as np

from lunakit.errors import LunakitError

FLOAT32_BYTES = 4


class RequestError(LunakitError):
    """A request the server refuses; `status` is the HTTP status code to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_shape(shape: Any, crop_size: Sequence[int], max_crops: int) -> tuple[int, ...]:
    """The validated crop-array shape (N, 1, I, R, C) from a client's [N, I, R, C] or [N, 1, I, R, C]."""
    expected = "[N, " + ", ".join(str(s) for s in crop_size) + "]"
    if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise RequestError(f"shape must be a list of integers {expected}, got {shape!r}")
    dims = tuple(shape)
    if len(dims) == len(crop_size) + 2 and dims[1] == 1:
        dims = (dims[0],) + dims[2:]
    if len(dims) != len(crop_size) + 1 or tuple(dims[1:]) != tuple(crop_size):
        raise RequestError(f"shape must be {expected} (crops of the bundle's crop size), got {list(shape)}")
    count = dims[0]
    if count < 1:
        raise RequestError(f"shape: N must be at least 1, got {count}")
    if count > max_crops:
        raise RequestError(f"shape: {count} crops in one request, more than the limit of {max_crops}", status=413)
    return (count, 1) + tuple(crop_size)


def crops_from_bytes(raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """float32 crops of `shape` from little-endian bytes; refuses a size mismatch or non-finite values."""
    needed = math.prod(shape) * FLOAT32_BYTES
    if len(raw) != needed:
        raise RequestError(
            f"data holds {len(raw)} bytes; shape {list(shape[:1]) + list(shape[2:])} of float32 needs {needed}"
        )
    crops = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)  # astype copies: writable
    if not np.isfinite(crops).all():
        raise RequestError("data contains NaN or infinite values")
    return crops


def crops_from_json(body: bytes, crop_size: Sequence[int], max_crops: int) -> np.ndarray:
    """Crops from a JSON body {"shape": [...], "data": "<base64 float32>"}."""
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"body is not valid JSON ({exc})") from None
    if not isinstance(document, dict) or "shape" not in document or "data" not in document:
        raise RequestError('body must be a JSON object with "shape" and "data"')
    shape = check_shape(document["shape"], crop_size, max_crops)
    data = document["data"]
    if not isinstance(data, str):
        raise RequestError('"data" must be a base64 string')
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError('"data" is not valid base64') from None
    return crops_from_bytes(raw, shape)


def parse_shape_header(header: str | None) -> list[int]:
    """The integers of an `X-Shape: N,32,48,48` header."""
    if header is None or not header.strip():
        raise RequestError("application/octet-stream needs an X-Shape header, e.g. X-Shape: 1,32,48,48")
    try:
        return [int(part) for part in header.replace(" ", "").split(",")]
    except ValueError:
        raise RequestError(f"X-Shape {header!r}: expected comma-separated integers such as 1,32,48,48") from None


def crops_from_octets(body: bytes, shape_header: str | None, crop_size: Sequence[int], max_crops: int) -> np.ndarray:
    """Crops from raw little-endian float32 bytes and an X-Shape header."""
    shape = check_shape(parse_shape_header(shape_header), crop_size, max_crops)
    return crops_from_bytes(body, shape)


def encode_crops(crops: np.ndarray) -> dict[str, Any]:
    """The JSON request body for crops [N, I, R, C] (what a client sends; used by tests and benchmarks)."""
    array = np.ascontiguousarray(crops, dtype="<f4")
    return {"shape": list(array.shape), "data": base64.b64encode(array.tobytes()).decode("ascii")}
