"""Image files that declare many pixels but take little disk space and time to write
("decompression bombs"), for the tests of the pixel limit (DATASET.max_image_pixels)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

# a 400-million-pixel PNG: about 50 KB on disk, 1.2 GB as RGB once decoded
BOMB_SIDE = 20000


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def write_blank_png(path: Path, width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> Path:
    """A valid black 1-bit grayscale PNG of ``width`` x ``height``, compressed row by row
    (never held in memory: 0.1 s and 50 KB for 20000x20000)."""
    row = bytes(1 + (width + 7) // 8)  # filter type 0, then the row's packed zero bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data)
                     + _chunk(b"IEND", b""))
    return path


def write_bmp_header(path: Path, width: int, height: int) -> Path:
    """A 24-bit BMP file header declaring ``width`` x ``height`` pixels, without the pixels
    (a format whose size only Pillow reads here)."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"BM" + struct.pack("<IHHI", 54 + 16, 0, 0, 54) + info + bytes(16))
    return path
