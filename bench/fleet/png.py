"""A tiny line-chart rasteriser that writes PNG with zlib and struct (no plotting library)."""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Mapping, Sequence

RGB = tuple[int, int, int]

# 3x5 glyphs, one row per string, for the few characters chart labels need.
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001001001", "8": "111101111101111",
    "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "/": "001001010100100", "$": "011110010011110", "%": "101001010100101",
    " ": "000000000000000", "(": "010100100100010", ")": "010001001001010",
    ":": "000010000010000", "=": "000111000111000", "+": "000010111010000",
}
for _c, _rows in {
    "A": "010101111101101", "B": "110101110101110", "C": "011100100100011",
    "D": "110101101101110", "E": "111100110100111", "F": "111100110100100",
    "G": "011100101101011", "H": "101101111101101", "I": "111010010010111",
    "J": "001001001101010", "K": "101101110101101", "L": "100100100100111",
    "M": "101111111101101", "N": "110101101101101", "O": "010101101101010",
    "P": "110101110100100", "Q": "010101101110011", "R": "110101110101101",
    "S": "011100010001110", "T": "111010010010010", "U": "101101101101111",
    "V": "101101101101010", "W": "101101111111101", "X": "101101010101101",
    "Y": "101101010010010", "Z": "111001010100111",
}.items():
    _FONT[_c] = _rows


class Canvas:
    """An RGB raster with lines, rectangles and 3x5 text, saved as PNG."""

    def __init__(self, width: int, height: int, background: RGB = (255, 255, 255)) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * width * height)

    def dot(self, x: int, y: int, color: RGB) -> None:
        """Set one pixel (ignored outside the canvas)."""
        if 0 <= x < self.width and 0 <= y < self.height:
            i = 3 * (y * self.width + x)
            self.pixels[i : i + 3] = bytes(color)

    def line(self, x0: float, y0: float, x1: float, y1: float, color: RGB, width: int = 1) -> None:
        """A straight line, ``width`` pixels thick."""
        steps = max(1, int(max(abs(x1 - x0), abs(y1 - y0))))
        for s in range(steps + 1):
            x = round(x0 + (x1 - x0) * s / steps)
            y = round(y0 + (y1 - y0) * s / steps)
            for dx in range(width):
                for dy in range(width):
                    self.dot(x + dx, y + dy, color)

    def rect(self, x: int, y: int, w: int, h: int, color: RGB) -> None:
        """A filled rectangle."""
        for yy in range(y, y + h):
            for xx in range(x, x + w):
                self.dot(xx, yy, color)

    def text(self, x: int, y: int, s: str, color: RGB = (0, 0, 0), scale: int = 2) -> None:
        """Upper-cased text in the 3x5 font."""
        for ch in s.upper():
            rows = _FONT.get(ch, _FONT[" "])
            for i, bit in enumerate(rows):
                if bit == "1":
                    self.rect(x + (i % 3) * scale, y + (i // 3) * scale, scale, scale, color)
            x += 4 * scale

    def save(self, path: str) -> None:
        """Write the canvas as an 8-bit RGB PNG."""
        row = 3 * self.width
        raw = b"".join(b"\x00" + bytes(self.pixels[y * row : (y + 1) * row])
                       for y in range(self.height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        with open(path, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                    + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def panel(canvas: Canvas, box: tuple[int, int, int, int], title: str,
          xs: Sequence[float], series: Mapping[str, Sequence[float]], colors: Mapping[str, RGB],
          *, log_y: bool = False) -> None:
    """One chart: log2 x axis (request rate), linear or log y, a line per series."""
    x0, y0, w, h = box
    canvas.text(x0, y0 - 16, title)
    grey, black = (210, 210, 210), (0, 0, 0)
    values = [v for vs in series.values() for v in vs if _shown(v, log_y)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if log_y:
        lo, hi = math.log10(lo), math.log10(hi)
    if hi - lo < 1e-9:
        hi = lo + 1.0
    lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)
    lx = [math.log2(x) for x in xs]

    def px(i: int) -> float:
        return x0 + (lx[i] - lx[0]) / ((lx[-1] - lx[0]) or 1.0) * w

    def py(v: float) -> float:
        v = math.log10(v) if log_y else v
        return y0 + h - (v - lo) / (hi - lo) * h

    for k in range(5):
        y = y0 + h * k / 4
        canvas.line(x0, y, x0 + w, y, grey)
        v = hi - (hi - lo) * k / 4
        canvas.text(x0 - 56, round(y) - 4, _fmt(10**v if log_y else v), black, 1)
    for i, x in enumerate(xs):
        canvas.line(px(i), y0, px(i), y0 + h, grey)
        canvas.text(round(px(i)) - 4, y0 + h + 6, f"{x:g}", black, 1)
    canvas.line(x0, y0 + h, x0 + w, y0 + h, black)
    canvas.line(x0, y0, x0, y0 + h, black)
    for name, vs in series.items():
        pts = [(px(i), py(v)) for i, v in enumerate(vs) if _shown(v, log_y)]
        for (a, b), (c, d) in itertools.pairwise(pts):
            canvas.line(a, b, c, d, colors[name], 2)


def _shown(v: float, log_y: bool) -> bool:
    return math.isfinite(v) and (v > 0 or not log_y)


def _fmt(v: float) -> str:
    if abs(v) >= 1e5:
        return f"{v / 1e3:.0f}K"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}"
