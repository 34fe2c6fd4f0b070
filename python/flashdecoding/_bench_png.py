"""A minimal RGB raster with a 3x5 pixel font, written out as PNG with zlib.

Used by the benchmark's plot when matplotlib is not importable.  Pure Python.
"""

from __future__ import annotations

import struct
import zlib

# 3x5 glyphs, rows top to bottom, '1' = ink.  Lower case prints as upper case.
_GLYPHS = {
    "0": "111 101 101 101 111", "1": "010 110 010 010 111", "2": "111 001 111 100 111",
    "3": "111 001 111 001 111", "4": "101 101 111 001 001", "5": "111 100 111 001 111",
    "6": "111 100 111 101 111", "7": "111 001 010 010 010", "8": "111 101 111 101 111",
    "9": "111 101 111 001 111",
    "A": "010 101 111 101 101", "B": "110 101 110 101 110", "C": "011 100 100 100 011",
    "D": "110 101 101 101 110", "E": "111 100 110 100 111", "F": "111 100 110 100 100",
    "G": "011 100 101 101 011", "H": "101 101 111 101 101", "I": "111 010 010 010 111",
    "J": "001 001 001 101 010", "K": "101 101 110 101 101", "L": "100 100 100 100 111",
    "M": "101 111 111 101 101", "N": "110 101 101 101 101", "O": "010 101 101 101 010",
    "P": "110 101 110 100 100", "Q": "010 101 101 110 011", "R": "110 101 110 101 101",
    "S": "011 100 010 001 110", "T": "111 010 010 010 010", "U": "101 101 101 101 111",
    "V": "101 101 101 101 010", "W": "101 101 111 111 101", "X": "101 101 010 101 101",
    "Y": "101 101 010 010 010", "Z": "111 001 010 100 111",
    " ": "000 000 000 000 000", "/": "001 001 010 100 100", "-": "000 000 111 000 000",
    ".": "000 000 000 000 010", "%": "101 001 010 100 101", ":": "000 010 000 010 000",
    "=": "000 111 000 111 000", ",": "000 000 000 010 100", "(": "001 010 010 010 001",
    ")": "100 010 010 010 100", "<": "001 010 100 010 001", ">": "100 010 001 010 100",
    "_": "000 000 000 000 111", "+": "000 010 111 010 000", "?": "111 001 010 000 010",
}
GLYPH_W, GLYPH_H = 3, 5


def _glyph(ch):
    g = _GLYPHS.get(ch.upper(), _GLYPHS["?"])
    return [row for row in g.split()]


class Canvas:
    """RGB image, origin top-left."""

    def __init__(self, width: int, height: int, bg=(255, 255, 255)):
        if width < 1 or height < 1:
            raise ValueError("canvas must be at least 1x1")
        self.width, self.height = width, height
        self.px = bytearray(bytes(bg) * (width * height))

    def set(self, x, y, color):
        if 0 <= x < self.width and 0 <= y < self.height:
            i = 3 * (y * self.width + x)
            self.px[i:i + 3] = bytes(color)

    def get(self, x, y):
        i = 3 * (y * self.width + x)
        return tuple(self.px[i:i + 3])

    def rect(self, x0, y0, x1, y1, color):
        """Fill [x0, x1) x [y0, y1), clipped."""
        x0, x1 = max(0, int(x0)), min(self.width, int(x1))
        y0, y1 = max(0, int(y0)), min(self.height, int(y1))
        if x0 >= x1:
            return
        row = bytes(color) * (x1 - x0)
        for y in range(y0, y1):
            i = 3 * (y * self.width + x0)
            self.px[i:i + len(row)] = row

    def hline(self, x0, x1, y, color, dash=0):
        for x in range(int(x0), int(x1)):
            if not dash or (x // dash) % 2 == 0:
                self.set(x, int(y), color)

    def vline(self, x, y0, y1, color):
        self.rect(x, y0, x + 1, y1, color)

    def text(self, x, y, s, color=(0, 0, 0), scale=2):
        """Draw ``s`` with its top-left at (x, y); returns the x after it."""
        for ch in s:
            for r, row in enumerate(_glyph(ch)):
                for c, bit in enumerate(row):
                    if bit == "1":
                        self.rect(x + c * scale, y + r * scale,
                                  x + (c + 1) * scale, y + (r + 1) * scale, color)
            x += (GLYPH_W + 1) * scale
        return x

    @staticmethod
    def text_width(s, scale=2):
        return len(s) * (GLYPH_W + 1) * scale

    def to_png(self) -> bytes:
        raw = bytearray()
        stride = 3 * self.width
        for y in range(self.height):
            raw.append(0)  # filter: none
            raw += self.px[y * stride:(y + 1) * stride]

        def chunk(kind, data):
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

        ihdr = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                + chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b""))


def read_png_rgb(data: bytes):
    """Decode a PNG written by :meth:`Canvas.to_png` (8-bit RGB, filter 0):
    returns (width, height, pixel bytes).  For tests."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat = 8, b""
    w = h = None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise ValueError(f"bad CRC in {kind!r}")
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, _ = struct.unpack(">IIBBBBB", body)
            if (depth, ctype) != (8, 2):
                raise ValueError("only 8-bit RGB")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    px = bytearray()
    stride = 3 * w
    for y in range(h):
        line = raw[y * (stride + 1):(y + 1) * (stride + 1)]
        if line[0] != 0:
            raise ValueError("only filter 0")
        px += line[1:]
    return w, h, bytes(px)
