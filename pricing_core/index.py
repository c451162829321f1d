"""Targeting index: per (dimension, value) a two-level bitmap over campaigns, so evaluate
visits only campaigns that pass format, size, device type and country targeting.

Row r = row0[d] + v holds the campaigns that accept value v of dimension d (they target v,
or do not target d at all); row row0[d] + vocab_size[d] holds the untargeted ones only, for
values the vocabulary does not know. `summary[r, j]` has bit k set when `bits[r, 64*j+k]` is
non-zero, so the query ANDs summaries first and touches only words that can hold a
candidate: work grows with candidate campaigns, plus n/4096 summary words per dimension.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _pack_rows(mask: np.ndarray, n_words: int) -> np.ndarray:
    """bool [rows, n] -> uint64 [rows, n_words], bit k of word j = column 64*j + k."""
    rows, n = mask.shape
    padded = np.zeros((rows, n_words * 64), np.bool_)
    padded[:, :n] = mask
    packed = np.packbits(padded, axis=1, bitorder="little")
    return np.ascontiguousarray(packed.view(np.uint64).reshape(rows, n_words))


@dataclass(frozen=True)
class TargetingIndex:
    bits: np.ndarray      # uint64 [rows, words]
    summary: np.ndarray   # uint64 [rows, summary words]
    row0: np.ndarray      # int32 [indexed dims]
    vocab_size: np.ndarray  # int32 [indexed dims]

    @classmethod
    def build(cls, targeting_bits, targeting_any, dim_start, vocab_sizes) -> "TargetingIndex":
        n = targeting_bits.shape[0]
        n_words = max(1, (n + 63) // 64)
        n_summary = max(1, (n_words + 63) // 64)
        masks = []
        row0 = np.zeros(len(vocab_sizes), np.int32)
        for d, size in enumerate(vocab_sizes):
            row0[d] = sum(len(m) for m in masks)
            untargeted = (targeting_any >> np.uint32(d)) & 1 == 1
            m = np.empty((size + 1, n), np.bool_)
            for v in range(size):
                word = targeting_bits[:, dim_start[d] + v // 64]
                m[v] = untargeted | ((word >> np.uint64(v % 64)) & np.uint64(1) == 1)
            m[size] = untargeted
            masks.append(m)
        bits = _pack_rows(np.concatenate(masks), n_words)
        summary = _pack_rows(bits != 0, n_summary)
        return cls(bits, summary, row0, np.asarray(vocab_sizes, np.int32))
