"""CRC-32C (Castagnoli), in pure Python with a lookup table, and TFRecord's mask.

Slow next to a C implementation (a few MB/s), which is fine for verifying
the framing of local test data; nothing here is on a serving path.
"""

from __future__ import annotations

_POLY = 0x82F63B78  # the Castagnoli polynomial, bit-reversed


def _table() -> tuple[int, ...]:
    rows = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        rows.append(crc)
    return tuple(rows)


_TABLE = _table()


def crc32c(data: bytes | memoryview, crc: int = 0) -> int:
    """The CRC-32C of ``data`` (continuing from ``crc``)."""
    table = _TABLE
    crc ^= 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits and add a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
