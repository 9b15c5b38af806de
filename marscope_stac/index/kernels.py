"""Compiled kernels of the scans (numba), compiled on first use and cached on disk.

numpy has no fast int8 x float32 product: the scans used to convert each block of int8 rows
to float32 and multiply the copy, at a quarter of the speed the memory allows. The kernel
here reads every int8 code once and accumulates in float32 registers (2.2 to 2.8 times the
numpy scan's speed here). numba is imported when a query engine opens a set it scans in
int8 (:func:`warm_kernels`, in a background thread while the query vector is made), so
other commands do not pay for it. Loading it takes about 0.4 s of a core, more than one
scan saves: ``marscope query`` of one or two texts scans with numpy instead (see
:func:`~marscope_stac.index.scan.int8_block`). The machine code is cached beside this module
(or in the user's cache folder when the package is read-only), so only the first scan ever
on a machine compiles (about 0.5 s).

Each row's score is one sequence of operations whatever block it falls in, so results do not
depend on how rows are cut into blocks: a Dask worker's range gives the bits a whole scan
gives.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["int8_scores", "warm_kernels"]

_lock = threading.Lock()
_kernel: list[Callable[..., None]] = []


def warm_kernels() -> threading.Thread:
    """Load (or compile) the kernels in a background thread; a scan then finds them ready.

    A failure here is left for the scan to meet (and report) in its own thread.
    """

    def load() -> None:
        with contextlib.suppress(Exception):
            _int8_kernel()

    thread = threading.Thread(target=load, name="marscope-kernels", daemon=True)
    thread.start()
    return thread


def _int8_kernel() -> Callable[..., None]:
    """The compiled int8 x float32 row kernel (compiled or loaded from the cache once)."""
    with _lock:
        if not _kernel:
            _kernel.append(_compile_int8())
        return _kernel[0]


def _compile_int8() -> Callable[..., None]:
    """The kernel for its one signature, compiled (or loaded from the cache) right here.

    Inputs are read-only C-contiguous arrays, the output a writable one: one signature, so
    nothing is compiled or loaded lazily at the first scan.
    """
    from numba import njit, types

    def ro(dtype: Any, ndim: int) -> Any:
        return types.Array(dtype, ndim, "C", readonly=True)

    signature = types.void(
        ro(types.int8, 2), ro(types.float32, 1), ro(types.float32, 1), types.float32[::1]
    )

    def kernel(codes: Any, scale: Any, q: Any, out: Any) -> None:  # pragma: no cover - jitted
        rows, dim = codes.shape
        for i in range(rows):
            acc = np.float32(0.0)
            for j in range(dim):
                acc += np.float32(codes[i, j]) * q[j]
            out[i] = acc * scale[i]

    try:
        return njit(signature, nogil=True, fastmath=True, cache=True)(kernel)
    except RuntimeError:  # no folder to cache in (a read-only install, no home): compile here
        return njit(signature, nogil=True, fastmath=True)(kernel)


def _read_only(a: Any, dtype: Any) -> NDArray[Any]:
    """``a`` as a read-only C-contiguous array of ``dtype`` (a view when it is one)."""
    view = np.ascontiguousarray(np.asarray(a), dtype).view()
    view.flags.writeable = False
    return view


def int8_scores(
    codes: NDArray[np.int8], scale: NDArray[np.float32], q: NDArray[np.float32]
) -> NDArray[np.float32]:
    """Scores of int8 rows: ``(codes @ q) * scale``, float32 arithmetic, one row at a time.

    The interpreter lock is released while it runs, so threads scan blocks side by side.
    """
    codes = _read_only(codes, np.int8)
    if codes.ndim != 2 or np.shape(scale) != (len(codes),) or np.shape(q) != codes.shape[1:]:
        raise ValueError(
            f"int8 rows {codes.shape}, scales {np.shape(scale)} and query {np.shape(q)} do not fit"
        )
    out = np.empty(len(codes), np.float32)
    if len(codes):
        _int8_kernel()(codes, _read_only(scale, np.float32), _read_only(q, np.float32), out)
    return out
