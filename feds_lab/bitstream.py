"""The ``.feds`` file: a small versioned container around a codec's entropy-coded streams.

Layout (big-endian)::

    magic  b"FEDS"          4 bytes
    version                 1 byte   (FORMAT_VERSION)
    model fingerprint       8 bytes  (feds_lab.checkpoint.fingerprint)
    image height, width     2 x u32  (before padding)
    stream count n          1 byte
    stream lengths          n x u32
    shape length            u16, then the latent shapes as compact JSON
    streams                 the rANS byte strings, in order
    CRC-32                  u32 over everything above

Every way a file can be wrong (truncated, corrupted, foreign, another model's) raises
:class:`~feds_lab.errors.BitstreamError` with a message, before the entropy decoder sees a byte.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from .errors import BitstreamError

MAGIC = b"FEDS"
FORMAT_VERSION = 1
MAX_SIDE = 1 << 16  # refuse absurd sizes before allocating anything
_HEAD = struct.Struct(">4sB8sIIB")


@dataclass
class Bitstream:
    fingerprint: str  # 16 hex digits
    height: int
    width: int
    streams: list[bytes]
    shape: Any  # the codec's latent shapes, as its decompress() wants them

    def to_bytes(self) -> bytes:
        if not 0 < len(self.streams) < 256:
            raise ValueError("between 1 and 255 streams")
        shape = json.dumps(_plain(self.shape), separators=(",", ":")).encode()
        out = bytearray(_HEAD.pack(MAGIC, FORMAT_VERSION, bytes.fromhex(self.fingerprint), self.height, self.width, len(self.streams)))
        out += struct.pack(f">{len(self.streams)}I", *map(len, self.streams))
        out += struct.pack(">H", len(shape)) + shape
        for s in self.streams:
            out += s
        out += struct.pack(">I", zlib.crc32(out))
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Bitstream":
        if len(data) < 4 or data[:4] != MAGIC:
            raise BitstreamError("not a feds-lab file (wrong magic bytes)")
        if len(data) < _HEAD.size + 4:
            raise BitstreamError(f"file is truncated ({len(data)} bytes, shorter than its header)")
        _, version, fp, h, w, n = _HEAD.unpack_from(data)
        if version != FORMAT_VERSION:
            raise BitstreamError(f"format version {version} is not supported (this feds-lab reads version {FORMAT_VERSION})")
        if zlib.crc32(data[:-4]) != struct.unpack(">I", data[-4:])[0]:
            raise BitstreamError("checksum mismatch: the file is truncated or corrupted")
        pos = _HEAD.size
        try:
            lengths = struct.unpack_from(f">{n}I", data, pos)
            pos += 4 * n
            (slen,) = struct.unpack_from(">H", data, pos)
            pos += 2
            shape = json.loads(data[pos : pos + slen])
            pos += slen
        except (struct.error, ValueError) as e:
            raise BitstreamError(f"malformed header ({e})") from None
        if n == 0 or not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
            raise BitstreamError(f"implausible header (image {h}x{w}, {n} streams)")
        if pos + sum(lengths) + 4 != len(data):
            raise BitstreamError("stream lengths do not add up to the file size")
        streams = []
        for length in lengths:
            streams.append(data[pos : pos + length])
            pos += length
        return cls(fp.hex(), h, w, streams, shape)


def _plain(obj: Any) -> Any:
    """torch.Size / tuples / dicts of them -> JSON-able lists and dicts."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return int(obj)


def shape_from_json(obj: Any) -> Any:
    """Back to what CompressAI's decompress expects: dicts stay dicts, lists become tuples."""
    if isinstance(obj, dict):
        return {k: shape_from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return tuple(shape_from_json(v) for v in obj)
    return obj
