"""Targeting index: bitmaps over campaigns for every targeting dimension, so evaluate
decides targeting for 64 campaigns per word operation and visits only the campaigns that
pass all of it. Work per opportunity is n/64 words per dimension plus the eligible ones.

Single-valued dimensions (format, size, device type, country): dense row r = row0[d] + v
holds the campaigns that accept value v (they target v, or do not target d at all); row
row0[d] + vocab_size[d] holds the untargeted ones only, for values no campaign targets.

Set dimensions (category, segment, deal, and domain, whose vocabulary is large): a dense
"untargeted" row per dimension, and per value a sparse postings list of the non-zero words
of "campaigns that target this value" (`posting_ptr` into `posting_word`/`posting_bits`),
so memory grows with targeting entries, not with vocabulary x campaigns. A value targeted
by campaigns in at least 1/DENSE_DIVISOR of the words is kept as a dense row instead
(`posting_dense[p]` >= 0 names its row of `dense_bits`, and its sparse range is empty):
ORing a dense row streams and vectorises, where that many scattered words do not. An
opportunity's
accepted set on a set dimension is the untargeted row ORed with the postings of each of
its values (any common value matches); dimensions are ANDed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# A posting list with at least n_words / DENSE_DIVISOR words is stored dense (measured: a
# scattered word costs about as much as four streamed ones).
DENSE_DIVISOR = 4


def _pack_rows(mask: np.ndarray, n_words: int) -> np.ndarray:
    """bool [rows, n] -> uint64 [rows, n_words], bit k of word j = column 64*j + k."""
    rows, n = mask.shape
    padded = np.zeros((rows, n_words * 64), np.bool_)
    padded[:, :n] = mask
    packed = np.packbits(padded, axis=1, bitorder="little")
    return np.ascontiguousarray(packed.view(np.uint64).reshape(rows, n_words))


def _postings(value: np.ndarray, campaign: np.ndarray, n_values: int):
    """(value, campaign) pairs -> CSR over values of (word index, word bits), words sorted."""
    ptr = np.zeros(n_values + 1, np.int64)
    if len(value) == 0:
        return ptr, np.zeros(0, np.int32), np.zeros(0, np.uint64)
    value = value.astype(np.int64)
    campaign = campaign.astype(np.int64)
    key = value * (1 << 32) + (campaign >> 6)
    order = np.argsort(key, kind="stable")
    key = key[order]
    bit = np.left_shift(np.uint64(1), (campaign[order] & 63).astype(np.uint64))
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    words = np.bitwise_or.reduceat(bit, starts)
    word_value = key[starts] >> 32
    np.add.at(ptr, word_value + 1, 1)
    return np.cumsum(ptr), (key[starts] & 0xFFFFFFFF).astype(np.int32), words


@dataclass(frozen=True)
class TargetingIndex:
    bits: np.ndarray          # uint64 [single rows, words]: accept rows, single dims
    row0: np.ndarray          # int32 [single dims]
    vocab_size: np.ndarray    # int32 [single dims]
    untargeted: np.ndarray    # uint64 [set dims, words]
    posting0: np.ndarray      # int32 [set dims]: posting id of value 0 of each set dim
    posting_ptr: np.ndarray   # int64 [postings + 1]
    posting_word: np.ndarray  # int32, or int64 in a table [non-zero words]
    posting_bits: np.ndarray  # uint64 [non-zero words]
    posting_dense: np.ndarray  # int32, or int64 in a table [postings]: dense_bits row, -1 sparse
    dense_bits: np.ndarray    # uint64 [dense rows, words]

    @property
    def n_postings(self) -> int:
        return len(self.posting_ptr) - 1

    @classmethod
    def build(cls, n_campaigns: int, single: Sequence[tuple[np.ndarray, np.ndarray, int]],
              sets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, int]]
              ) -> "TargetingIndex":
        """single: per single-valued dim (accepts [n, vocab] bool, untargeted [n] bool,
        vocab size). sets: per set dim (value ids, campaign ids of those targeting
        entries, untargeted [n] bool, vocab size)."""
        n = n_campaigns
        n_words = max(1, (n + 63) // 64)
        masks = []
        row0 = np.zeros(len(single), np.int32)
        for d, (accepts, untargeted, size) in enumerate(single):
            row0[d] = sum(len(m) for m in masks)
            m = np.empty((size + 1, n), np.bool_)
            m[:size] = accepts.T | untargeted
            m[size] = untargeted
            masks.append(m)
        bits = _pack_rows(np.concatenate(masks) if masks else np.zeros((0, n), np.bool_),
                          n_words)
        untargeted = _pack_rows(np.array([s[2] for s in sets], np.bool_).reshape(
            len(sets), n), n_words)
        posting0 = np.zeros(len(sets), np.int32)
        values, campaigns = [], []
        offset = 0
        for d, (value, campaign, _, size) in enumerate(sets):
            posting0[d] = offset
            values.append(np.asarray(value, np.int64) + offset)
            campaigns.append(np.asarray(campaign, np.int64))
            offset += size
        ptr, word, wbits = _postings(np.concatenate(values) if values else np.zeros(0),
                                     np.concatenate(campaigns) if campaigns else np.zeros(0),
                                     offset)
        ptr, word, wbits, dense, dense_bits = _split_dense(ptr, word, wbits, n_words)
        return cls(bits, row0, np.array([s[2] for s in single], np.int32), untargeted,
                   posting0, ptr, word, wbits, dense, dense_bits)


def _split_dense(ptr, word, wbits, n_words):
    """Move the posting lists holding >= n_words / DENSE_DIVISOR words to dense rows."""
    counts = np.diff(ptr)
    is_dense = counts * DENSE_DIVISOR >= n_words
    is_dense &= counts > 0
    dense = np.full(len(counts), -1, np.int32)
    dense[is_dense] = np.arange(int(is_dense.sum()), dtype=np.int32)
    dense_bits = np.zeros((int(is_dense.sum()), n_words), np.uint64)
    owner = np.repeat(np.arange(len(counts)), counts)
    moved = is_dense[owner]
    dense_bits[dense[owner[moved]], word[moved]] = wbits[moved]
    keep = ~moved
    new_ptr = np.zeros_like(ptr)
    new_ptr[1:] = np.cumsum(np.where(is_dense, 0, counts))
    return (new_ptr, np.ascontiguousarray(word[keep]), np.ascontiguousarray(wbits[keep]),
            dense, dense_bits)


# The header of KernelArrays.postings: where each part starts (LAYOUT_* entries).
(LAYOUT_UNTARGETED, LAYOUT_DENSE, LAYOUT_STATIC, LAYOUT_N_SET, LAYOUT_PTR, LAYOUT_DENSE_MAP,
 LAYOUT_ENTRIES) = range(7)
LAYOUT_SIZE = 8


@dataclass(frozen=True)
class KernelArrays:
    """The index and the table's static bitmaps as evaluate reads them, in two arrays (each
    array argument adds to every kernel call's cost):

    words: uint64 [rows, words]: the single-dimension accept rows (row r = index.bits[r]),
      then the set dimensions' untargeted rows from postings[LAYOUT_UNTARGETED], the dense
      posting rows from postings[LAYOUT_DENSE], the static rows from postings[LAYOUT_STATIC].
    postings: int64: a LAYOUT_SIZE header, posting_ptr from postings[LAYOUT_PTR] (entry
      numbers), posting_dense from postings[LAYOUT_DENSE_MAP], and from
      postings[LAYOUT_ENTRIES] each sparse entry as a (word, bits) pair, so an entry is
      one read.
    """
    words: np.ndarray
    postings: np.ndarray

    @classmethod
    def build(cls, index: TargetingIndex, static_bits: np.ndarray) -> "KernelArrays":
        blocks = (index.bits, index.untargeted, index.dense_bits, static_bits)
        starts = np.cumsum([0] + [len(b) for b in blocks])
        words = np.concatenate(blocks) if starts[-1] else np.zeros(
            (0, index.bits.shape[1]), np.uint64)
        n_postings = index.n_postings
        n_entries = len(index.posting_word)
        postings = np.zeros(LAYOUT_SIZE + 2 * n_postings + 1 + 2 * n_entries, np.int64)
        ptr0 = LAYOUT_SIZE
        map0 = ptr0 + n_postings + 1
        entries0 = map0 + n_postings
        postings[:LAYOUT_SIZE] = (starts[1], starts[2], starts[3], len(index.untargeted),
                                  ptr0, map0, entries0, 0)
        postings[ptr0:map0] = index.posting_ptr
        postings[map0:entries0] = index.posting_dense
        postings[entries0::2] = index.posting_word
        postings[entries0 + 1::2] = index.posting_bits.view(np.int64)
        return cls(np.ascontiguousarray(words, np.uint64), postings)

    def views(self, index: TargetingIndex) -> tuple[TargetingIndex, np.ndarray]:
        """`index` with its arrays replaced by views of these (one copy in memory), and the
        static rows."""
        h = self.postings[:LAYOUT_SIZE]
        w, p = self.words, self.postings
        return dataclasses.replace(
            index, bits=w[:h[LAYOUT_UNTARGETED]],
            untargeted=w[h[LAYOUT_UNTARGETED]:h[LAYOUT_DENSE]],
            dense_bits=w[h[LAYOUT_DENSE]:h[LAYOUT_STATIC]],
            posting_ptr=p[h[LAYOUT_PTR]:h[LAYOUT_DENSE_MAP]],
            posting_dense=p[h[LAYOUT_DENSE_MAP]:h[LAYOUT_ENTRIES]],
            posting_word=p[h[LAYOUT_ENTRIES]::2],
            posting_bits=p[h[LAYOUT_ENTRIES] + 1::2].view(np.uint64),
        ), w[h[LAYOUT_STATIC]:]
