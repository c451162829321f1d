"""A batch of impression opportunities as arrays, encoded against one CampaignTable's
vocabularies; the DSP builds it from a BidRequest's imps and hands it to evaluate."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .campaigns import (DIM_CATEGORY, DIM_COUNTRY, DIM_DEAL, DIM_DEVICE, DIM_FORMAT,
                        DIM_SEGMENT, DIM_SIZE, INDEXED_DIMS, SET_DIM_NAMES, SET_DOMAIN,
                        CampaignTable)

AUCTION_FIRST_PRICE = 1   # OpenRTB 2.6 BidRequest.at
AUCTION_SECOND_PRICE = 2


def user_key_hash(user_key: str) -> int:
    """Stable signed 64-bit hash of a user key (frequency table key). Stable across
    processes, unlike hash(); collisions only merge two users' frequency counts."""
    digest = hashlib.blake2b(user_key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


@dataclass
class Opportunity:
    format: str
    w: int
    h: int
    domain: str
    device_type: int
    country: str
    categories: tuple[str, ...]
    segments: tuple[str, ...]
    deal_ids: tuple[str, ...]
    floor_micros: int
    user_key: str
    predicted_viewability: float
    predicted_ctr: float
    auction_type: int = AUCTION_FIRST_PRICE


# Columns of OpportunityBatch.ints and .floats.
INT_FLOOR, INT_USER_KEY_HASH, INT_AUCTION_TYPE = range(3)
FLOAT_VIEWABILITY, FLOAT_CTR = range(2)


def _column(field: str, column: int, doc: str) -> property:
    """A named view of one column of a 2D field."""
    return property(lambda self: getattr(self, field)[:, column], doc=doc)


@dataclass(frozen=True)
class OpportunityBatch:
    """Arrays per opportunity. evaluate reads three of them (each array argument adds to
    every kernel call's cost): `rows[i, :INDEXED_DIMS]` are the targeting-index rows of the
    single-valued dimensions, then for each set dimension s (SET_DIM_NAMES order) `width`
    index postings of the opportunity's values, -1 padded, values no campaign targets left
    out; `ints` holds floor, user key hash and auction type, `floats` the predicted
    viewability and CTR (INT_*, FLOAT_* columns; named views below). `feature_bits[i]`
    uses the table's bitset layout (single-valued dimensions set one bit, or none for a
    value no campaign targets)."""
    rows: np.ndarray              # int32 [n, INDEXED_DIMS + set dims x width]
    ints: np.ndarray              # int64 [n, 3]: INT_* columns
    floats: np.ndarray            # float64 [n, 2]: FLOAT_* columns
    feature_bits: np.ndarray      # uint64 [n, words]
    domain_id: np.ndarray         # int32, -1 = unknown to every campaign
    format_id: np.ndarray         # int32, -1 unknown
    size_id: np.ndarray           # int32, -1 unknown

    def __len__(self) -> int:
        return len(self.ints)

    @property
    def index_rows(self) -> np.ndarray:
        return self.rows[:, :INDEXED_DIMS]

    @property
    def set_rows(self) -> np.ndarray:
        """int32 [n, set dims, width]."""
        n_set = len(SET_DIM_NAMES)
        width = (self.rows.shape[1] - INDEXED_DIMS) // n_set
        return self.rows[:, INDEXED_DIMS:].reshape(len(self.rows), n_set, width)

    floor_micros = _column("ints", INT_FLOOR, "int64 floors in micros")
    user_key_hash = _column("ints", INT_USER_KEY_HASH, "int64 user key hashes")
    auction_type = _column("ints", INT_AUCTION_TYPE, "OpenRTB auction types (1, 2)")
    predicted_viewability = _column("floats", FLOAT_VIEWABILITY, "float64 in [0, 1]")
    predicted_ctr = _column("floats", FLOAT_CTR, "float64 in [0, 1]")

    @classmethod
    def encode(cls, table: CampaignTable,
               opportunities: Sequence[Opportunity]) -> "OpportunityBatch":
        n = len(opportunities)
        vocab = table.vocabularies
        bits = np.zeros((n, table.targeting_bits.shape[1]), np.uint64)
        rows = np.zeros((n, INDEXED_DIMS), np.int32)
        ids = np.full((n, INDEXED_DIMS), -1, np.int32)

        def set_bit(i, d, value):
            b = vocab[d].get(value)
            if b >= 0:
                bits[i, table.dim_start[d] + b // 64] |= np.uint64(1) << np.uint64(b % 64)
            return b

        postings: list[list[list[int]]] = []
        for i, o in enumerate(opportunities):
            single = (o.format, (o.w, o.h), o.device_type, o.country)
            for d, value in zip((DIM_FORMAT, DIM_SIZE, DIM_DEVICE, DIM_COUNTRY), single):
                b = set_bit(i, d, value)
                ids[i, d] = b
                rows[i, d] = table.index.row0[d] + (b if b >= 0 else table.index.vocab_size[d])
            per_set: list[list[int]] = []
            for s, (d, values) in enumerate(((DIM_CATEGORY, o.categories),
                                             (DIM_SEGMENT, o.segments),
                                             (DIM_DEAL, o.deal_ids))):
                known = {set_bit(i, d, v) for v in values} - {-1}
                per_set.append(sorted(int(table.index.posting0[s]) + b for b in known))
            domain = table.domain_vocabulary.get(o.domain)
            per_set.append([int(table.index.posting0[SET_DOMAIN]) + domain]
                           if domain >= 0 else [])
            postings.append(per_set)
        width = max([1] + [len(p) for per_set in postings for p in per_set])
        set_rows = np.full((n, len(SET_DIM_NAMES), width), -1, np.int32)
        for i, per_set in enumerate(postings):
            for s, p in enumerate(per_set):
                set_rows[i, s, :len(p)] = p
        for o in opportunities:
            if o.auction_type not in (AUCTION_FIRST_PRICE, AUCTION_SECOND_PRICE):
                raise ValueError(f"auction_type must be 1 or 2, got {o.auction_type!r}")
            if o.floor_micros < 0:
                raise ValueError(f"floor_micros must be non-negative, got {o.floor_micros}")
            for name in ("predicted_viewability", "predicted_ctr"):
                value = getattr(o, name)
                if not 0.0 <= value <= 1.0:  # False for NaN too
                    raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        ints = np.empty((n, 3), np.int64)
        ints[:, INT_FLOOR] = [o.floor_micros for o in opportunities]
        ints[:, INT_USER_KEY_HASH] = [user_key_hash(o.user_key) for o in opportunities]
        ints[:, INT_AUCTION_TYPE] = [o.auction_type for o in opportunities]
        floats = np.empty((n, 2), np.float64)
        floats[:, FLOAT_VIEWABILITY] = [o.predicted_viewability for o in opportunities]
        floats[:, FLOAT_CTR] = [o.predicted_ctr for o in opportunities]
        flat_sets = set_rows.reshape(n, len(SET_DIM_NAMES) * width)
        return cls(
            rows=np.ascontiguousarray(np.concatenate([rows, flat_sets], axis=1), np.int32),
            ints=ints,
            floats=floats,
            feature_bits=bits,
            domain_id=np.array([table.domain_vocabulary.get(o.domain) for o in opportunities],
                               np.int32),
            format_id=np.ascontiguousarray(ids[:, DIM_FORMAT]),
            size_id=np.ascontiguousarray(ids[:, DIM_SIZE]),
        )
