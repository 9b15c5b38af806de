"""Mapbox Vector Tile encoding of many polygons at once, with numpy.

A tile is a protobuf message; here its bytes are assembled from arrays (varints, command
streams, tags and values for every feature at once) instead of one message object per
feature. :func:`polygon_streams` encodes the geometry of every feature of a zoom in one pass;
a tile then needs only each feature's first point re-encoded relative to its corner
(:class:`FeatureStreams`), since every later command is relative to the cursor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from marscope_stac.products.polygons import PolygonArrays, expand_ranges

__all__ = [
    "BoxStreams",
    "FeatureStreams",
    "ValueColumns",
    "box_streams",
    "dense_records",
    "layer_message",
    "polygon_streams",
    "records",
    "row_counts",
    "varint_matrix",
    "varints",
]

Part = tuple[NDArray[np.uint8], NDArray[np.int64], NDArray[np.int64]]
"""Bytes of many records: one buffer, each record's start and length in it."""


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num: int, wire: int, payload: bytes | int) -> bytes:
    """One protobuf field: a varint (``wire`` 0) or length-delimited bytes (``wire`` 2)."""
    key = _varint((num << 3) | wire)
    if wire == 0:
        return key + _varint(int(payload))
    data = payload if isinstance(payload, bytes) else b""
    return key + _varint(len(data)) + data


def varint_matrix(values: NDArray[Any]) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """Varints of an (m, k) array (or m values), each in a slot of one width.

    Returns the (m, k * width) bytes and which of them are used: ``bytes[used]`` is every
    row's varints one after the other, row after row. Negative values are their unsigned
    64-bit patterns (as protobuf stores an ``int64``).
    """
    v = np.asarray(values)
    if v.ndim == 1:
        v = v[:, None]
    m, k = v.shape
    if v.dtype.kind == "i" and v.size and int(v.min()) < 0:
        v = v.astype(np.uint64)
    top = int(v.max()) if v.size else 0
    width = max(1, (top.bit_length() + 6) // 7)
    if width == 1:  # one byte each, no continuation bit
        return v.astype(np.uint8).reshape(m, k), np.ones((m, k), bool)
    v = v.astype(np.uint32 if top < 2**32 else np.uint64)  # narrower: half the memory traffic
    one = v.dtype.type(1)
    dense = np.empty((m, k, width), np.uint8)
    used = np.empty((m, k, width), bool)
    used[:, :, 0] = True
    for j in range(1, width):  # byte j is used when the value needs more than 7 j bits
        np.greater_equal(v, one << v.dtype.type(7 * j), out=used[:, :, j])
    for j in range(width):
        low = ((v >> v.dtype.type(7 * j)) & v.dtype.type(0x7F)).astype(np.uint8)
        if j + 1 < width:  # the continuation bit: the next byte is used
            low |= used[:, :, j + 1].view(np.uint8) << np.uint8(7)
        dense[:, :, j] = low
    return dense.reshape(m, k * width), used.reshape(m, k * width)


def row_counts(used: NDArray[np.bool_]) -> NDArray[np.int64]:
    """How many bytes of each row of a boolean matrix are used (5 times numpy's sum)."""
    if used.ndim != 2 or used.shape[1] > 255:
        return np.count_nonzero(used, axis=1).astype(np.int64)
    ones = np.ones(used.shape[1], np.uint8)
    return (np.ascontiguousarray(used).view(np.uint8) @ ones).astype(np.int64)


def varints(values: NDArray[Any]) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Protobuf varints of many values at once; returns the bytes and each value's end offset."""
    v = np.asarray(values).ravel()
    dense, used = varint_matrix(v)
    return dense[used], np.cumsum(row_counts(used), dtype=np.int64)


def varint_part(values: NDArray[Any]) -> Part:
    """One varint per record."""
    data, ends = varints(values)
    lengths = np.diff(np.r_[0, ends])
    return data, ends - lengths, lengths


def const_part(data: bytes, n: int) -> Part:
    """The same bytes in each of ``n`` records."""
    return np.frombuffer(data, np.uint8), np.zeros(n, np.int64), np.full(n, len(data), np.int64)


def zigzag(v: NDArray[np.int64]) -> NDArray[np.uint64]:
    """Protobuf zigzag encoding of signed integers."""
    return ((v << 1) ^ (v >> 63)).astype(np.uint64)


def interleave(parts: Sequence[Part]) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Concatenate byte ranges into records, all records at once.

    Record ``r`` is ``buf[start[r]:start[r] + length[r]]`` of each part in turn. Returns all
    records in one buffer and each record's length.
    """
    lengths = np.column_stack([ln for _, _, ln in parts])
    rec_len = lengths.sum(axis=1)
    ends = np.cumsum(rec_len)
    out = np.empty(int(ends[-1]) if len(ends) else 0, np.uint8)
    offsets = (ends - rec_len)[:, None] + np.cumsum(lengths, axis=1) - lengths
    for j, (buf, start, ln) in enumerate(parts):
        if not ln.any():
            continue
        if (ln == ln[0]).all() and not start.any():  # the same bytes in every record
            at = offsets[:, j][:, None] + np.arange(ln[0])
            out[at] = buf[: ln[0]]
            continue
        dst = expand_ranges(offsets[:, j], ln)
        out[dst] = buf[expand_ranges(start, ln)]
    return out, rec_len


def _ring_area2(
    pts: NDArray[np.int64], pt_ring: NDArray[np.int64], n_rings: int
) -> NDArray[np.int64]:
    """Twice the signed area of each ring of integer points (rings given point by point)."""
    if len(pts) == 0:
        return np.zeros(n_rings, np.int64)
    start = np.r_[True, pt_ring[1:] != pt_ring[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(len(pts)), 0))
    last_of_ring = np.r_[pt_ring[1:] != pt_ring[:-1], True]
    nxt = np.where(last_of_ring, first, np.arange(len(pts)) + 1)
    cross = pts[:, 0] * pts[nxt, 1] - pts[nxt, 0] * pts[:, 1]
    return np.bincount(pt_ring, weights=cross, minlength=n_rings).astype(np.int64)


@dataclass(frozen=True)
class FeatureStreams:
    """MVT geometry command streams of many features, packed in one buffer.

    Attributes:
        data: Every stream's varints, feature after feature.
        start: Each feature's first byte in ``data``.
        end: Each feature's end in ``data`` (``end == start``: nothing left to draw).
        first: (n, 2) each feature's first point, in the integer coordinates encoded.
        rest: Where each feature's stream goes on after its first point (the bytes from
            ``rest`` to ``end`` do not depend on where the tile's corner is).
    """

    data: NDArray[np.uint8]
    start: NDArray[np.int64]
    end: NDArray[np.int64]
    first: NDArray[np.int64]
    rest: NDArray[np.int64]

    def moved(self, index: NDArray[np.int64], corner: tuple[int, int]) -> list[Part]:
        """Streams of the features at ``index`` in a tile whose corner is at ``corner``.

        Returns two parts per feature: the first MoveTo from the new corner, the rest.
        """
        d = self.first[index] - np.asarray(corner, np.int64)
        head = np.column_stack([np.full(len(index), 9, np.int64), d]).astype(np.int64)
        head[:, 1:] = zigzag(head[:, 1:]).astype(np.int64)
        buf, ends = varints(head.ravel())
        head_end = ends[2::3]
        head_len = np.diff(np.r_[0, head_end])
        rest = self.rest[index]
        return [(buf, head_end - head_len, head_len), (self.data, rest, self.end[index] - rest)]


def polygon_streams(
    polygons: PolygonArrays, scale: float, corner: tuple[int, int] = (0, 0)
) -> FeatureStreams:
    """MVT geometry command streams of polygonal features, all at once.

    Points are ``floor(xy * scale + 0.5) - corner`` (so a whole-number corner moves them
    exactly), with repeated points dropped. Rings are turned as MVT wants (exteriors of
    positive area in tile coordinates, holes negative); rings left with fewer than three
    points or no area (simplified or rounded to a line) are skipped, and a feature with no
    ring left gets an empty stream. The cursor starts at (0, 0) in every feature.
    """
    n = len(polygons)
    if n == 0 or len(polygons.coords) == 0:
        none = np.zeros(n, np.int64)
        return FeatureStreams(np.zeros(0, np.uint8), none, none, np.zeros((n, 2), np.int64), none)
    pt_ring = np.repeat(np.arange(len(polygons.rings) - 1), np.diff(polygons.rings))
    pts = np.floor(polygons.coords * scale + 0.5).astype(np.int64) - np.asarray(corner)
    last = np.r_[pt_ring[1:] != pt_ring[:-1], True]  # closing point of each ring
    first = np.r_[True, pt_ring[1:] != pt_ring[:-1]]
    keep = ~last & (first | np.r_[True, np.any(pts[1:] != pts[:-1], axis=1)])
    pts, pt_ring = pts[keep], pt_ring[keep]
    # the ring goes round: its last point is dropped too when it is its first one again
    end_of_ring = np.r_[pt_ring[1:] != pt_ring[:-1], True]
    ring_first = np.maximum.accumulate(
        np.where(np.r_[True, pt_ring[1:] != pt_ring[:-1]], np.arange(len(pts)), 0)
    )
    again = end_of_ring & (ring_first != np.arange(len(pts)))
    again &= np.all(pts == pts[ring_first], axis=1)
    pts, pt_ring = pts[~again], pt_ring[~again]
    n_rings = len(polygons.rings) - 1
    counts = np.bincount(pt_ring, minlength=n_rings)
    area = _ring_area2(pts, pt_ring, n_rings)
    ok_ring = (counts >= 3) & (area != 0)
    pts = _oriented(pts, pt_ring, counts, area < 0, polygons.ring_is_exterior())
    sel = ok_ring[pt_ring]
    pts = pts[sel]
    ring_ids = np.flatnonzero(ok_ring)
    return _streams(pts, counts[ring_ids], polygons.ring_feature()[ring_ids], n)


def _oriented(
    pts: NDArray[np.int64],
    pt_ring: NDArray[np.int64],
    counts: NDArray[np.int64],
    negative: NDArray[np.bool_],
    exterior: NDArray[np.bool_],
) -> NDArray[np.int64]:
    """Points with the rings that turn the wrong way reversed (each keeps its first point)."""
    flip = negative == exterior
    if not flip[pt_ring].any():
        return pts
    ring_start = np.cumsum(counts) - counts
    k = np.arange(len(pts)) - ring_start[pt_ring]
    m = counts[pt_ring]
    pos = np.where(flip[pt_ring] & (k > 0), m - k, k) + ring_start[pt_ring]
    out = np.empty_like(pts)
    out[pos] = pts
    return out


def _streams(
    pts: NDArray[np.int64], m: NDArray[np.int64], ring_feat: NDArray[np.int64], n: int
) -> FeatureStreams:
    """Command streams of rings of ``m`` points each (already oriented), features ``ring_feat``."""
    none = np.zeros(n, np.int64)
    if len(pts) == 0:
        return FeatureStreams(np.zeros(0, np.uint8), none, none, np.zeros((n, 2), np.int64), none)
    pt_feat = np.repeat(ring_feat, m)
    prev = np.vstack([[0, 0], pts[:-1]])
    new_feat = np.r_[True, pt_feat[1:] != pt_feat[:-1]]
    prev[new_feat] = 0
    zz = zigzag(pts - prev)
    ring_len = 2 * m + 3
    ring_start = np.cumsum(ring_len) - ring_len
    stream = np.zeros(int(ring_len.sum()), np.uint64)
    stream[ring_start] = 9  # MoveTo, count 1
    stream[ring_start + 3] = (2 | ((m - 1) << 3)).astype(np.uint64)  # LineTo, count m - 1
    stream[ring_start + ring_len - 1] = 15  # ClosePath
    k = np.arange(len(pts)) - np.repeat(np.cumsum(m) - m, m)
    posx = np.repeat(ring_start, m) + 1 + 2 * k + (k >= 1)
    stream[posx] = zz[:, 0]
    stream[posx + 1] = zz[:, 1]
    data, ends = varints(stream)
    first_ring = np.flatnonzero(np.r_[True, ring_feat[1:] != ring_feat[:-1]])  # rings by feature
    feat_ids = ring_feat[first_ring]
    last_ring = np.r_[first_ring[1:], len(ring_feat)] - 1
    start, end, rest = none.copy(), none.copy(), none.copy()
    start_val = ring_start[first_ring]
    start[feat_ids] = np.where(start_val > 0, ends[np.maximum(start_val - 1, 0)], 0)
    end[feat_ids] = ends[ring_start[last_ring] + ring_len[last_ring] - 1]
    rest[feat_ids] = ends[start_val + 2]
    first = np.zeros((n, 2), np.int64)
    first[feat_ids] = pts[(np.cumsum(m) - m)[first_ring]]
    return FeatureStreams(data, start, end, first, rest)


@dataclass(frozen=True)
class ValueColumns:
    """Feature attributes as MVT values: one table of distinct values shared by every key.

    Each value is stored as ``uint_value`` when it is a whole number from 0 up, as
    ``float_value`` when it survives float32, else as ``double_value``: what is read back is
    always the value given, in as few bytes as that allows. Keys share entries (a single
    cell's max and mean probability are one value).
    """

    keys: list[str]
    distinct: NDArray[np.float64]
    kinds: NDArray[np.int8]  # 0 uint, 1 float, 2 double, per distinct value
    index: NDArray[np.int64]  # (n, k) each feature's values as indexes into ``distinct``

    @classmethod
    def of(cls, columns: dict[str, NDArray[Any]]) -> ValueColumns:
        """The value table of attribute ``columns`` (one value per feature in each)."""
        keys = list(columns)
        n = len(next(iter(columns.values()))) if columns else 0
        table = np.column_stack([np.asarray(columns[k], np.float64) for k in keys])
        distinct, inverse = np.unique(table.reshape(n, len(keys)), return_inverse=True)
        return cls(keys, distinct, _kinds(distinct), inverse.reshape(n, len(keys)))

    def tile(self, features: NDArray[np.int64]) -> tuple[bytes, NDArray[np.int64]]:
        """The value messages of a tile holding ``features``, and each feature's tags.

        The tags are one row per feature: key index, value index, for each key in turn.
        """
        n, k = len(features), len(self.keys)
        used, local = _used(self.index[features].ravel(), len(self.distinct))
        # the most used values first: their indexes are the shortest varints
        order = np.argsort(-np.bincount(local, minlength=len(used)), kind="stable")
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        used, local = used[order], rank[local]
        tags = np.empty((n, 2 * k), np.int64)
        tags[:, 0::2] = np.arange(k)
        tags[:, 1::2] = local.reshape(n, k)
        return _value_messages(self.distinct[used], self.kinds[used]), tags


def _used(index: NDArray[np.int64], n: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The distinct values of ``index`` (all below ``n``), sorted, and each one's rank in them."""
    if len(index) * 16 < n:  # few: sorting them beats a pass over all n
        used, local = np.unique(index, return_inverse=True)
        return used, local.ravel()
    seen = np.zeros(n, bool)
    seen[index] = True
    rank = np.cumsum(seen) - 1
    return np.flatnonzero(seen), rank[index]


def _kinds(values: NDArray[np.float64]) -> NDArray[np.int8]:
    """How each value is stored: 0 ``uint_value``, 1 ``float_value``, 2 ``double_value``."""
    with np.errstate(invalid="ignore", over="ignore"):
        whole = (values >= 0) & (values < 2.0**63) & (values == np.floor(values))
        as_float = values.astype(np.float32).astype(np.float64) == values
    return np.where(whole, 0, np.where(as_float & np.isfinite(values), 1, 2)).astype(np.int8)


def _value_messages(values: NDArray[np.float64], kinds: NDArray[np.int8]) -> bytes:
    """The layer's value messages (field 4) of ``values``, each stored as its kind says."""
    n = len(values)
    dense = np.zeros((n, 13), np.uint8)
    used = np.zeros((n, 13), bool)
    dense[:, 0] = 0x22  # value (layer field 4), length-delimited
    for kind, (width, tag, dtype) in ((1, (4, 0x15, "<f4")), (2, (8, 0x19, "<f8"))):
        sel = kinds == kind
        dense[sel, 1], dense[sel, 2] = 1 + width, tag
        raw = np.ascontiguousarray(values[sel], dtype).view(np.uint8)
        dense[sel, 3 : 3 + width] = raw.reshape(-1, width)
        used[sel, : 3 + width] = True
    sel = kinds == 0
    if sel.any():
        digits, digit_used = varint_matrix(values[sel].astype(np.uint64))
        dense[sel, 1] = 1 + row_counts(digit_used)
        dense[sel, 2] = 0x28  # uint_value (field 5, varint)
        dense[sel, 3 : 3 + digits.shape[1]] = digits
        used[sel, :3] = True
        used[sel, 3 : 3 + digits.shape[1]] = digit_used
    return dense[used].tobytes()


def row_part(values: NDArray[Any]) -> Part:
    """Each row of an (m, k) array as one record of k varints."""
    dense, used = varint_matrix(values)
    lengths = row_counts(used)
    return dense[used], np.cumsum(lengths) - lengths, lengths


def records(ids: NDArray[np.int64], tags: NDArray[np.int64], geometry: Sequence[Part]) -> bytes:
    """Polygon features (layer field 2, one after another) of any geometry length.

    ``ids`` are the feature ids, ``tags`` one row per feature (:meth:`ValueColumns.tile`);
    ``geometry`` holds the parts that, one after the other, make each command stream.
    """
    n = len(ids)
    if n == 0:
        return b""
    tag_part = row_part(tags)
    g_len = _total_length(geometry)
    body = [
        const_part(b"\x08", n),  # id (field 1, varint)
        varint_part(ids),
        const_part(b"\x12", n),  # tags (field 2, packed)
        varint_part(tag_part[2]),
        tag_part,
        const_part(b"\x18\x03\x22", n),  # type POLYGON (field 3), geometry (field 4)
        varint_part(g_len),
        *geometry,
    ]
    body_len = _total_length(body)
    features, _ = interleave([const_part(b"\x12", n), varint_part(body_len), *body])
    return features.tobytes()


def _total_length(parts: Sequence[Part]) -> NDArray[np.int64]:
    """Each record's length over all ``parts``."""
    return np.column_stack([ln for _, _, ln in parts]).sum(axis=1)


Dense = tuple[NDArray[np.uint8], NDArray[np.bool_]]
"""Bytes of many records as rows of one width, and which bytes of each row are used."""


def _const_dense(data: bytes, n: int) -> Dense:
    return np.tile(np.frombuffer(data, np.uint8), (n, 1)), np.ones((n, len(data)), bool)


def dense_records(
    ids: NDArray[np.int64], tags: NDArray[np.int64], geometry: Sequence[Dense]
) -> bytes:
    """Polygon features like :func:`records`, for short geometries given as rows.

    Every field of every feature is laid out in a row of one width and the used bytes taken
    in one pass: far faster than :func:`records` for many small features (boxes).
    """
    n = len(ids)
    if n == 0:
        return b""
    tag_rows = varint_matrix(tags)
    g_len = row_counts(np.concatenate([used for _, used in geometry], axis=1))
    body = [
        _const_dense(b"\x08", n),
        varint_matrix(ids),
        _const_dense(b"\x12", n),
        varint_matrix(row_counts(tag_rows[1])),
        tag_rows,
        _const_dense(b"\x18\x03\x22", n),
        varint_matrix(g_len),
        *geometry,
    ]
    body_len = row_counts(np.concatenate([used for _, used in body], axis=1))
    rows = [_const_dense(b"\x12", n), varint_matrix(body_len), *body]
    dense = np.concatenate([d for d, _ in rows], axis=1)
    used = np.concatenate([u for _, u in rows], axis=1)
    return dense[used].tobytes()


@dataclass(frozen=True)
class BoxStreams:
    """Command streams of axis-aligned rectangles, as rows of one width.

    Attributes:
        first: (n, 2) each box's first corner, in integer tile coordinates.
        rest: The stream after the first point (LineTo, three moves, ClosePath), as rows.
        drawn: Whether each box keeps an area at this scale (else it is left out).
    """

    first: NDArray[np.int64]
    rest: Dense
    drawn: NDArray[np.bool_]

    def moved(self, index: NDArray[np.int64], corner: tuple[int, int]) -> list[Dense]:
        """Streams of the boxes at ``index`` in a tile whose corner is at ``corner``."""
        d = zigzag(self.first[index] - np.asarray(corner, np.int64))
        head = varint_matrix(np.column_stack([np.full(len(index), 9, np.uint64), d]))
        return [head, (self.rest[0][index], self.rest[1][index])]


def box_streams(corners: NDArray[np.float64], scale: float) -> BoxStreams:
    """Streams of rectangles whose rings run ``(xa, ya), (xa, yb), (xb, yb), (xb, ya)``.

    ``corners`` holds ``xa, ya, xb, yb`` per box. The streams are those
    :func:`polygon_streams` makes of the same rings, built from four numbers per box.
    """
    xa, ya, xb, yb = np.floor(corners * scale + 0.5).astype(np.int64).T
    dv, dh = yb - ya, xb - xa
    zero = np.zeros_like(dv)
    as_given = (xa - xb) * (yb - ya) > 0  # positive area: the ring turns as MVT wants
    moves = np.where(
        as_given[:, None],
        np.column_stack([zero, dv, dh, zero, zero, -dv]),
        np.column_stack([dh, zero, zero, dv, -dh, zero]),
    )
    line_to = np.full(len(xa), 2 | (3 << 3), np.uint64)
    close = np.full(len(xa), 15, np.uint64)
    rest = varint_matrix(np.column_stack([line_to, zigzag(moves), close]))
    return BoxStreams(np.column_stack([xa, ya]), rest, (dv != 0) & (dh != 0))


def layer_message(
    name: str, features: Sequence[bytes], keys: Sequence[str], values: bytes, extent: int
) -> bytes:
    """A tile of one layer: its name, features, keys, values and extent."""
    layer = field(15, 0, 2) + field(1, 2, name.encode()) + b"".join(features)
    layer += b"".join(field(3, 2, key.encode()) for key in keys)
    layer += values + field(5, 0, extent)
    return field(3, 2, layer)
