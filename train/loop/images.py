"""The image files of the feedback store: a sample payload's image fields (``edgeclf/sample/v1``)
decoded and checked against what the payload says of them, PNG encoding for what the host writes
itself, and the durable write (temp name, fsync, rename, fsync of the folder)."""
from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

import cv2
import numpy as np

from train.loop.samples import FeedbackError

_MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}
_CHANNELS = {"grey": 1, "rgb": 3}


def _decode_b64(data: str, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise FeedbackError(f"{where}: not valid base64 ({e})") from e


def _decode_image(data: bytes, where: str) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if img is None:
        raise FeedbackError(f"{where}: the bytes are not a decodable image")
    return img


def decode_field(field: dict, where: str) -> tuple[bytes, np.ndarray]:
    """An image field's bytes and decoded image, checked against its ``bytes``, ``format``, ``width``
    and ``height``; FeedbackError naming the field that does not match."""
    data = _decode_b64(field["data"], f"{where}.data")
    if len(data) != field["bytes"]:
        raise FeedbackError(f"{where}.bytes: says {field['bytes']} but the data holds {len(data)} bytes")
    fmt = field["format"]
    if not data.startswith(_MAGIC[fmt]):
        raise FeedbackError(f"{where}.format: says {fmt} but the data is not a {fmt.upper()} file")
    img = _decode_image(data, f"{where}.data ({fmt})")
    if img.shape[:2] != (field["height"], field["width"]):
        raise FeedbackError(f"{where}.width/height: say {field['width']}x{field['height']} but the image is "
                            f"{img.shape[1]}x{img.shape[0]}")
    return data, img


def check_colour(field: dict, img: np.ndarray, where: str) -> None:
    channels = img.shape[2] if img.ndim == 3 else 1
    if channels != _CHANNELS[field["colour"]]:
        raise FeedbackError(f"{where}.colour: says {field['colour']} but the image has {channels} channel(s)")
    if img.dtype != np.uint8:
        raise FeedbackError(f"{where}.data: a {img.dtype.itemsize * 8}-bit image; a model input is 8-bit")


def encode_png(img: np.ndarray) -> bytes:
    """``img`` (BGR or grey, 8-bit) as PNG bytes; FeedbackError when OpenCV cannot encode it."""
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise FeedbackError(f"cannot encode a {img.shape} image as PNG")
    return buf.tobytes()


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that after a crash it is either the whole file or absent."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
