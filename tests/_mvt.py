"""Decoding Mapbox Vector Tiles just enough to check them (layers and their bytes)."""

from __future__ import annotations


def decode_mvt(data: bytes) -> list[tuple[int, bytes]]:
    """Top-level protobuf fields of a tile: (field number, payload)."""
    out, i = [], 0
    while i < len(data):
        key, i = _read_varint(data, i)
        field, wire = key >> 3, key & 7
        assert wire == 2
        n, i = _read_varint(data, i)
        out.append((field, data[i : i + n]))
        i += n
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i
