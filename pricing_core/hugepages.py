"""Read-mostly tables in transparent huge pages.

evaluate reads the campaign table at scattered places: a few bitmap rows and one price row
per candidate, across megabytes. With 4 KiB pages that is a TLB miss per candidate, and
under a hypervisor each miss walks two page tables. Copying the table's large arrays into
one anonymous mapping advised MADV_HUGEPAGE (Linux) puts them in 2 MiB pages; the
benchmark's 100k-campaign latency drops by about a quarter at p99.

Nothing else changes: the copies are ordinary C-contiguous NumPy arrays with the same
dtypes, shapes and values. Below one huge page in total, or where the platform has no
such advice, the arrays are returned as they are.
"""
from __future__ import annotations

import mmap
from typing import Sequence

import numpy as np

HUGE_PAGE = 2 << 20
ALIGN = 64  # each array starts on a cache line


def _padded(nbytes: int) -> int:
    return (nbytes + ALIGN - 1) // ALIGN * ALIGN


def pack(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Copies of `arrays` laid out one after another in a huge-page-advised mapping whose
    first byte is 2 MiB aligned, or the arrays themselves (see the module docstring)."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    total = sum(_padded(a.nbytes) for a in arrays)
    if advice is None or total < HUGE_PAGE:
        return tuple(arrays)
    size = (total + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE + HUGE_PAGE
    region = mmap.mmap(-1, size)
    try:
        region.madvise(advice)
    except OSError:  # a kernel built without transparent huge pages: ordinary pages
        pass
    raw = np.frombuffer(region, np.uint8)
    offset = -raw.ctypes.data % HUGE_PAGE
    copies = []
    for a in arrays:
        a = np.ascontiguousarray(a)
        copy = raw[offset:offset + a.nbytes].view(a.dtype).reshape(a.shape)
        copy[...] = a
        copies.append(copy)
        offset += _padded(a.nbytes)
    return tuple(copies)
