"""Vectorised scanning of whitespace-separated text: tokens, lines and decimal numbers.

Text formats such as Acclaim AMC motions hold hundreds of thousands of short decimal
numbers. Converting them one at a time with ``float()`` costs about 0.2 us a number
and dominates reading a file, so here the whole file is one byte array and every step
is a NumPy operation over all tokens at once.

Numbers are parsed with the SWAR ("SIMD within a register") technique of simdjson
(Langdale & Lemire, "Parsing gigabytes of JSON per second", VLDB Journal 2019): the
bytes of a token are read as two little-endian ``uint64`` words, the decimal point and
exponent marker are located with the exact zero-byte test, and eight ASCII digits in
one word become their integer value in three multiply-shift steps; here each step is
one NumPy operation on a vector of such words. A number ``m * 10**e`` whose integer
mantissa ``m`` has at most 15 digits and whose ``|e| <= 22`` is then one IEEE
multiplication or division of two exactly representable values and hence correctly
rounded: the same float64 that ``float()`` returns (Clinger's fast path, "How to read
floating point numbers accurately", PLDI 1990). The rare tokens outside that range go
through ``float()`` after a strict grammar check.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

_BLOCK = 8192  # tokens parsed at once (see parse_decimals)
_PAD = 8  # bytes of padding before the text; at least 24 follow it
_U = np.uint64
_LOW7 = _U(0x7F7F7F7F7F7F7F7F)
_ZEROS = _U(0x3030303030303030)  # eight ASCII '0'
_P10 = 10.0 ** np.arange(23)  # 10**22 is the last power of ten a float64 holds exactly
_STRICT_DECIMAL = re.compile(rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


@dataclass(frozen=True)
class Scan:
    """The tokens of a text.

    ``buf`` is the padded text, ``start``/``end`` (exclusive) the offsets of every token
    in ``buf``, and ``first`` marks the tokens that open their line.
    """

    buf: np.ndarray  # (n_bytes,) uint8
    start: np.ndarray  # (n_tokens,) int64
    end: np.ndarray  # (n_tokens,) int64
    first: np.ndarray  # (n_tokens,) bool

    def __len__(self) -> int:
        return len(self.start)

    def token(self, i: int) -> bytes:
        return self.buf[self.start[i] : self.end[i]].tobytes()

    def line_of(self, tokens: np.ndarray | int) -> np.ndarray | int:
        """1-based line numbers of tokens (computed on demand: only errors need them)."""
        newlines = np.flatnonzero(self.buf == 10)
        return np.searchsorted(newlines, self.start[tokens]) + 1


def scan(data: bytes) -> Scan:
    """Split ``data`` at ASCII whitespace and control characters into tokens.

    Lines end at ``\\n``; a ``\\r`` before it is whitespace, so CRLF needs no special case.
    """
    buf = np.full(_PAD + len(data) + 24 + (-len(data)) % 8, 32, dtype=np.uint8)
    buf[_PAD : _PAD + len(data)] = np.frombuffer(data, dtype=np.uint8)
    return _scan(buf)


def scan_file(path) -> Scan:
    """``scan`` of a file's bytes, read straight into the padded buffer."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = np.full(_PAD + size + 24 + (-size) % 8, 32, dtype=np.uint8)
        got = f.readinto(memoryview(buf)[_PAD : _PAD + size])
    if got != size:
        raise OSError(f"short read of {path} ({got} of {size} bytes)")
    return _scan(buf)


def _scan(buf: np.ndarray) -> Scan:
    ink = buf > 32
    start = np.flatnonzero(ink[1:] > ink[:-1]) + 1
    end = np.flatnonzero(ink[:-1] > ink[1:]) + 1
    first = buf[start - 1] == 10
    if len(start):
        first[0] = True
        # A gap longer than one byte can hold a newline not just before the token
        # (indented lines, blank lines with spaces): look into those gaps one by one.
        unsure = np.flatnonzero(~first & (buf[start - 2] <= 32))
        if len(unsure):
            raw = buf.tobytes()
            for i in unsure:
                if raw.find(b"\n", end[i - 1] if i else 0, start[i]) >= 0:
                    first[i] = True
    return Scan(buf=buf, start=start, end=end, first=first)


def _zero_bytes(x: np.ndarray) -> np.ndarray:
    """0x80 in every byte of ``x`` that is zero, 0 elsewhere (exact, no borrows)."""
    return ~(((x & _LOW7) + _LOW7) | x | _LOW7)


def _lowest_byte(mask: np.ndarray) -> np.ndarray:
    """Index (0..7) of the lowest byte flagged in ``mask``, 8 when none is."""
    low = mask & (~mask + _U(1))
    # A power of two converts exactly to float64; its exponent field is the bit index.
    bit = (low.astype(np.float64).view(np.int64) >> 52) - 1023
    return np.where(mask != 0, bit >> 3, 8)


def _first_of(mask_lo: np.ndarray, mask_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position (0..15, 16 when none) of the first flagged byte of a 16-byte value and
    whether more than one byte is flagged."""
    pos = np.where(mask_lo != 0, _lowest_byte(mask_lo), 8 + _lowest_byte(mask_hi))
    several = ((mask_lo & (mask_lo - _U(1))) != 0) | ((mask_hi & (mask_hi - _U(1))) != 0)
    several |= (mask_lo != 0) & (mask_hi != 0)
    return pos, several


def _low_mask(n_bytes: np.ndarray) -> np.ndarray:
    """Mask of the ``n_bytes`` (0..8) low bytes of a word; shifts by 64 give 0 in NumPy."""
    return (_U(1) << (n_bytes.astype(_U) << _U(3))) - _U(1)


def _shift_down(lo: np.ndarray, hi: np.ndarray, n_bytes: np.ndarray) -> np.ndarray:
    """Low word of the 16-byte value (lo, hi) shifted down by ``n_bytes`` (0..16)."""
    bits = n_bytes.astype(_U) << _U(3)
    below = (lo >> bits) | (hi << (_U(64) - bits))  # valid for n_bytes 1..8
    below = np.where(n_bytes == 0, lo, below)
    return np.where(n_bytes > 8, hi >> (bits - _U(64)), below)


def _eight_digits(word: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer value of eight ASCII digits (first digit in the low byte) and whether all
    eight bytes are digits."""
    ok = ((word & _U(0xF0F0F0F0F0F0F0F0)) | (((word + _U(0x0606060606060606)) & _U(0xF0F0F0F0F0F0F0F0)) >> _U(4))) == _U(
        0x3333333333333333
    )
    word = ((word & _U(0x0F0F0F0F0F0F0F0F)) * _U(2561)) >> _U(8)
    word = ((word & _U(0x00FF00FF00FF00FF)) * _U(6553601)) >> _U(16)
    word = ((word & _U(0x0000FFFF0000FFFF)) * _U(42949672960001)) >> _U(32)
    return word, ok


def _digits_ending_at(lo: np.ndarray, hi: np.ndarray, end: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Value of the digit field of ``length`` (0..8) bytes ending before byte ``end`` of
    the 16-byte value (lo, hi); bytes before the field count as leading zeros."""
    word = _shift_down(lo, hi, np.maximum(end - 8, 0))
    pad = 8 - length
    word = np.where(end >= 8, word, word << (_U(8) - end.astype(_U)) * _U(8))
    word = (word & ~_low_mask(pad)) | (_ZEROS & _low_mask(pad))
    return _eight_digits(word)


def _parse_short(sc: Scan, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The common case in one word: tokens of at most 8 bytes, ``[+-]digits[.digits]``.

    The token's bytes, with '0' after its end and in place of a sign, and the point
    removed (the bytes above it move down, a '0' comes in at the top), are eight digits
    ``D``: the number's digits followed by zeros. Its value is ``D / 10**(8 - i)`` with
    ``i`` the bytes before the point (or the length without one): one correctly rounded
    division of exact values. Returns values and a mask of the tokens this path
    accepted; the others (exponents, invalid text) are left to the general path.
    """
    words = sc.buf.view("<u8")
    at = start >> 3
    shift = ((start & 7) << 3).astype(_U)
    x = np.take(words, at) >> shift
    x |= np.take(words, at + 1) << (_U(64) - shift)
    inside = _low_mask(length)
    x = (x & inside) | (_ZEROS & ~inside)
    first = x & _U(0xFF)
    negative = first == 45
    signed = negative | (first == 43)
    x ^= signed.astype(_U) * (first ^ _U(0x30))  # the sign byte becomes '0'
    dots = _zero_bytes(x ^ _U(0x2E2E2E2E2E2E2E2E))
    below = (dots >> _U(7)) - _U(1)  # bytes below the point; all ones without one
    digits = (x & below) | (((x >> _U(8)) | _U(0x3000000000000000)) & ~below)
    value, ok = _eight_digits(digits)
    has_dot = dots != 0
    ok &= ((dots & (dots - _U(1))) == 0) & (length - signed - has_dot >= 1)
    # below + 1 = 2**(8 i) converts exactly to float64: its exponent field is 8 i.
    before = np.where(has_dot, ((below + _U(1)).astype(np.float64).view(np.int64) >> 55) - 127, length)
    magnitude = value.astype(np.float64) / np.take(_P10, 8 - before)
    return np.where(negative, -magnitude, magnitude), ok


def parse_decimals(sc: Scan, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 values of the tokens ``tokens`` (indices into ``sc``) and a bool mask of
    those that are finite decimal numbers, ``[+-]digits[.digits][(e|E)[+-]digits]``.

    Values equal ``float(token)`` exactly. Invalid tokens (``nan``, ``inf``, ``1_0``,
    ``1.2.3``, words) get NaN and ``False``.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    values = np.full(len(tokens), np.nan)
    valid = np.zeros(len(tokens), dtype=bool)
    if len(tokens) == 0:
        return values, valid
    start = sc.start[tokens]
    length = sc.end[tokens] - start
    # Blocks of a few thousand tokens keep every temporary in cache; whole-file vectors
    # of 1 MB+ cost a page fault per 4 kB on each of the ~50 operations.
    for lo in range(0, len(tokens), _BLOCK):
        hi = min(lo + _BLOCK, len(tokens))
        s, ln = start[lo:hi], length[lo:hi]
        short = ln <= 8
        if short.all():
            values[lo:hi], valid[lo:hi] = _parse_short(sc, s, ln)
        else:
            idx = np.flatnonzero(short)
            values[lo + idx], valid[lo + idx] = _parse_short(sc, s[idx], ln[idx])
    rest = np.flatnonzero(~valid)
    if len(rest):
        values[rest], valid[rest] = _parse_general(sc, start[rest], length[rest])
    return values, valid


def _parse_general(sc: Scan, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Any token: exponents and up to 16 bytes vectorised, the rest through ``float()``."""
    words = sc.buf.view("<u8")
    # The 16 bytes from the token start: a funnel shift of three aligned words.
    at = start >> 3
    shift = ((start & 7) << 3).astype(_U)
    w0, w1, w2 = (np.take(words, at + k) for k in range(3))
    lo = (w0 >> shift) | (w1 << (_U(64) - shift))
    hi = (w1 >> shift) | (w2 << (_U(64) - shift))
    lo &= _low_mask(np.minimum(length, 8))
    hi &= _low_mask(np.clip(length - 8, 0, 8))

    first = lo & _U(0xFF)
    negative = first == 45
    signed = negative | (first == 43)
    lo = np.where(signed, (lo >> _U(8)) | (hi << _U(56)), lo)
    hi = np.where(signed, hi >> _U(8), hi)
    rest = length - signed

    e_at, several_e = _first_of(_zero_bytes((lo | _U(0x2020202020202020)) ^ _U(0x6565656565656565)),
                                _zero_bytes((hi | _U(0x2020202020202020)) ^ _U(0x6565656565656565)))
    has_e = e_at < 16
    mant_end = np.minimum(e_at, rest)
    dot_at, several_dots = _first_of(_zero_bytes(lo ^ _U(0x2E2E2E2E2E2E2E2E)), _zero_bytes(hi ^ _U(0x2E2E2E2E2E2E2E2E)))
    has_dot = dot_at < mant_end
    frac_len = np.where(has_dot, mant_end - dot_at - 1, 0)
    mant_len = mant_end - has_dot

    # Mantissa digits without the point: bytes above the point move down one byte.
    keep = np.minimum(dot_at, 16)
    keep_lo = _low_mask(np.minimum(keep, 8))
    keep_hi = _low_mask(np.clip(keep - 8, 0, 8))
    m_lo = (lo & keep_lo) | (((lo >> _U(8)) | (hi << _U(56))) & ~keep_lo)
    m_hi = (hi & keep_hi) | ((hi >> _U(8)) & ~keep_hi)
    mantissa, mant_ok = _digits_ending_at(m_lo, m_hi, mant_len, np.minimum(mant_len, 8))
    long_mant = np.flatnonzero(mant_len > 8)
    if len(long_mant):
        high, high_ok = _digits_ending_at(m_lo[long_mant], m_hi[long_mant], mant_len[long_mant] - 8,
                                          np.clip(mant_len[long_mant] - 8, 0, 8))
        mantissa[long_mant] += high * _U(100_000_000)
        mant_ok[long_mant] &= high_ok

    # Exponent: an optional sign after the marker, then at most three digits here.
    e_next = _shift_down(lo, hi, np.minimum(e_at + 1, 16)) & _U(0xFF)
    exp_signed = has_e & ((e_next == 45) | (e_next == 43))
    exp_len = np.where(has_e, rest - e_at - 1 - exp_signed, 0)
    exp_val, exp_ok = _digits_ending_at(lo, hi, rest, np.clip(exp_len, 0, 8))
    exponent = np.where(has_e & (e_next == 45), -exp_val.astype(np.int64), exp_val.astype(np.int64)) - frac_len

    fast = (
        (length <= 16)
        & ~several_e
        & ~several_dots
        & (mant_len >= 1)
        & (mant_len <= 15)
        & (~has_dot | (dot_at < mant_end))
        & (~has_e | ((exp_len >= 1) & (exp_len <= 3)))
        & mant_ok
        & (exp_ok | ~has_e)
        & (np.abs(exponent) <= 22)
    )
    power = np.take(_P10, np.minimum(np.abs(exponent), 22))
    magnitude = mantissa.astype(np.float64)
    magnitude = np.where(exponent >= 0, magnitude * power, magnitude / power)
    values = np.where(fast, np.where(negative, -magnitude, magnitude), np.nan)
    valid = fast.copy()

    # The rest: long tokens, many digits, big exponents, or not numbers at all.
    raw = sc.buf
    for i in np.flatnonzero(~fast):
        text = raw[start[i] : start[i] + length[i]].tobytes()
        if _STRICT_DECIMAL.fullmatch(text) is None:
            continue
        value = float(text)
        if np.isfinite(value):
            values[i] = value
            valid[i] = True
    return values, valid
