"""The ``.feds`` file: a small versioned container around a codec's entropy-coded streams.

Layout (big-endian)::

    magic  b"FEDS"          4 bytes
    version                 1 byte   (FORMAT_VERSION; version 1 files, without the next two fields, still read)
    model fingerprint       8 bytes  (feds_lab.checkpoint.fingerprint)
    image height, width     2 x u32  (before padding)
    entropy-parameter path  1 byte   (version 2: feds_lab.entropy_path, 1 = float64 on one thread)
    symbol digest           8 bytes  (version 2: the hash the decoder must reproduce)
    stream count n          1 byte
    stream lengths          n x u32
    shape length            u16, then the latent shapes as compact JSON
    streams                 the rANS byte strings, in order
    CRC-32                  u32 over everything above

Every way a file can be wrong (truncated, corrupted, foreign, another model's) raises
:class:`~feds_lab.errors.BitstreamError` with a one-line message, before the entropy decoder sees a
byte; no other exception leaves :meth:`Bitstream.from_bytes`. Every length, nesting level and size
in the header is bounded before anything is allocated (``MAX_*`` below); the decoder
(:func:`feds_lab.coding.decode`) then requires the latent shapes to be exactly those the model
produces for the declared image size.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from .errors import BitstreamError, one_line

MAGIC = b"FEDS"
FORMAT_VERSION = 2
READS_VERSIONS = (1, 2)
MAX_SIDE = 1 << 16  # refuse absurd sizes before allocating anything
#: the most pixels a header may declare: what our image reader accepts at most (Pillow's bomb limit,
#: twice its warning limit of 89,478,485 pixels); the decoder also checks the memory it will need
MAX_PIXELS = 2 * 89_478_485
MAX_SHAPE_BYTES = 1024
MAX_SHAPE_DEPTH = 6
MAX_SHAPE_ITEMS = 64
_HEAD_V1 = struct.Struct(">4sB8sIIB")
_HEAD = struct.Struct(">4sB8sIIB8sB")  # ..., height, width, path, digest, stream count


@dataclass
class Bitstream:
    fingerprint: str  # 16 hex digits
    height: int
    width: int
    streams: list[bytes]
    shape: Any  # the codec's latent shapes, as its decompress() wants them
    path: int = 0  # how the entropy parameters were computed (feds_lab.entropy_path); 0 in version 1
    digest: bytes | None = None  # the decoder must reproduce it (feds_lab.entropy_path.SymbolDigest)
    version: int = FORMAT_VERSION

    def to_bytes(self) -> bytes:
        if not 0 < len(self.streams) < 256:
            raise ValueError("between 1 and 255 streams")
        shape = json.dumps(plain_shape(self.shape), separators=(",", ":")).encode()
        if self.version == 1:  # what feds-lab wrote before the digest (kept to test that such files still read)
            out = bytearray(_HEAD_V1.pack(MAGIC, 1, bytes.fromhex(self.fingerprint), self.height, self.width,
                                          len(self.streams)))
        else:
            if self.digest is None or len(self.digest) != 8 or not 0 <= self.path < 256:
                raise ValueError("a version 2 file needs an 8-byte digest and a path number")
            out = bytearray(_HEAD.pack(MAGIC, FORMAT_VERSION, bytes.fromhex(self.fingerprint), self.height, self.width,
                                       self.path, self.digest, len(self.streams)))
        out += struct.pack(f">{len(self.streams)}I", *map(len, self.streams))
        out += struct.pack(">H", len(shape)) + shape
        for s in self.streams:
            out += s
        out += struct.pack(">I", zlib.crc32(out))
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Bitstream":
        """Parse and check a whole file; every failure is a one-line :class:`BitstreamError`."""
        try:
            return cls._parse(bytes(data))
        except BitstreamError:
            raise
        except Exception as e:  # belt and braces: nothing else may leave the parser
            raise BitstreamError(f"malformed file ({type(e).__name__}: {one_line(e)})") from None

    @classmethod
    def _parse(cls, data: bytes) -> "Bitstream":
        if len(data) < 4 or data[:4] != MAGIC:
            raise BitstreamError("not a feds-lab file (wrong magic bytes)")
        if len(data) < _HEAD_V1.size + 4:
            raise BitstreamError(f"file is truncated ({len(data)} bytes, shorter than its header)")
        version = data[4]
        if version not in READS_VERSIONS:
            raise BitstreamError(f"format version {version} is not supported (this feds-lab reads versions "
                                 f"{', '.join(map(str, READS_VERSIONS))})")
        head = _HEAD if version == 2 else _HEAD_V1
        if len(data) < head.size + 4:
            raise BitstreamError(f"file is truncated ({len(data)} bytes, shorter than its header)")
        if zlib.crc32(data[:-4]) != struct.unpack(">I", data[-4:])[0]:
            raise BitstreamError("checksum mismatch: the file is truncated or corrupted")
        if version == 2:
            _, _, fp, h, w, path, digest, n = head.unpack_from(data)
        else:
            (_, _, fp, h, w, n), path, digest = head.unpack_from(data), 0, None
        check_image_size(h, w)
        if n == 0:
            raise BitstreamError("implausible header (no streams)")
        pos = head.size
        if pos + 4 * n + 2 + 4 > len(data):
            raise BitstreamError(f"malformed header ({n} stream lengths do not fit in {len(data)} bytes)")
        lengths = struct.unpack_from(f">{n}I", data, pos)
        pos += 4 * n
        (slen,) = struct.unpack_from(">H", data, pos)
        pos += 2
        if slen > MAX_SHAPE_BYTES or pos + slen + 4 > len(data):
            raise BitstreamError(f"malformed header (latent shapes of {slen} bytes)")
        shape = parse_shape(data[pos : pos + slen])
        pos += slen
        if pos + sum(lengths) + 4 != len(data):
            raise BitstreamError("stream lengths do not add up to the file size")
        streams = []
        for length in lengths:
            streams.append(data[pos : pos + length])
            pos += length
        return cls(fp.hex(), h, w, streams, shape, path, digest, version)


def check_image_size(h: int, w: int) -> None:
    """The image size a header may declare: each side in 1..MAX_SIDE, at most MAX_PIXELS pixels."""
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE) or h * w > MAX_PIXELS:
        raise BitstreamError(f"implausible header (image {h}x{w}; at most {MAX_SIDE} per side and "
                             f"{MAX_PIXELS:,} pixels)")


def parse_shape(raw: bytes) -> Any:
    """The header's latent shapes: compact JSON of dicts (string keys), lists and positive integers,
    nested at most MAX_SHAPE_DEPTH deep, with at most MAX_SHAPE_ITEMS numbers. Checked before parsing
    (nesting) and after (types, sizes), so that no header can exhaust the stack or the memory."""
    depth = deepest = 0
    for byte in raw:
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_SHAPE_DEPTH:
                raise BitstreamError(f"malformed header (latent shapes nested deeper than {MAX_SHAPE_DEPTH})")
        elif byte in b"]}":
            depth -= 1

    def no_floats(text):
        raise BitstreamError(f"malformed header (latent shapes hold a non-integer {text[:20]!r})")

    try:
        shape = json.loads(raw.decode("ascii"), parse_float=no_floats, parse_constant=no_floats)
    except BitstreamError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BitstreamError(f"malformed header (latent shapes: {one_line(e)})") from None
    count = 0

    def walk(s, level):
        nonlocal count
        if isinstance(s, dict):
            if not s:
                raise BitstreamError("malformed header (an empty group in the latent shapes)")
            for k, v in s.items():
                if len(k) > 32:
                    raise BitstreamError("malformed header (a long name in the latent shapes)")
                walk(v, level + 1)
        elif isinstance(s, list):
            if not s:
                raise BitstreamError("malformed header (an empty shape in the latent shapes)")
            for v in s:
                walk(v, level + 1)
        elif isinstance(s, int) and not isinstance(s, bool):
            count += 1
            if count > MAX_SHAPE_ITEMS or not 0 < s <= MAX_SIDE:
                raise BitstreamError(f"malformed header (latent shapes: {count} numbers, value {s})")
        else:
            raise BitstreamError(f"malformed header (latent shapes hold a {type(s).__name__})")

    if not isinstance(shape, (dict, list)):
        raise BitstreamError("malformed header (latent shapes are not a list or a dict)")
    walk(shape, 0)
    return shape


def plain_shape(obj: Any) -> Any:
    """torch.Size / tuples / dicts of them -> JSON-able lists and dicts."""
    if isinstance(obj, dict):
        return {str(k): plain_shape(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_shape(v) for v in obj]
    return int(obj)


def shape_from_json(obj: Any) -> Any:
    """Back to what CompressAI's decompress expects: dicts stay dicts, lists become tuples."""
    if isinstance(obj, dict):
        return {k: shape_from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return tuple(shape_from_json(v) for v in obj)
    return obj
