"""Campaigns as a struct of arrays: the DSP's config (CampaignSpec) becomes the dense,
int32-indexed CampaignTable that evaluate/accrue read. Built once per config change and
swapped whole by the engine, never edited in place."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from . import hugepages
from .index import KernelArrays, TargetingIndex

PRICING_MODELS = ("cpm", "vcpm", "cpc")
MODEL_CPM, MODEL_VCPM, MODEL_CPC = 0, 1, 2
PACING_MODES = ("even", "asap")
FORMATS = ("banner", "video", "audio", "native")

# Targeting dimensions, in the order of the bitset blocks. The first INDEXED_DIMS are
# single-valued on an opportunity (dense accept rows in the targeting index); the rest are
# sets on both sides (match = non-empty intersection). Every dimension, domains included,
# is decided by the index; SET_DIM_NAMES orders the index's set dimensions.
DIM_FORMAT, DIM_SIZE, DIM_DEVICE, DIM_COUNTRY, DIM_CATEGORY, DIM_SEGMENT, DIM_DEAL = range(7)
DIM_NAMES = ("format", "size", "device_type", "country", "category", "segment", "deal")
INDEXED_DIMS = 4
SET_DIM_NAMES = ("category", "segment", "deal", "domain")
SET_CATEGORY, SET_SEGMENT, SET_DEAL, SET_DOMAIN = range(len(SET_DIM_NAMES))

# Rows of CampaignTable.static_bits: per-campaign facts fixed by the config, as bitmaps in
# the targeting index's word layout (bit c % 64 of word c // 64), so evaluate can decide
# which surviving candidates need the slow checks 64 campaigns at a time.
STATIC_NO_BUDGET, STATIC_FLIGHT, STATIC_EVEN, STATIC_CAPPED = range(4)
# Columns of CampaignTable.price_record (float64) and check_record (int64): the columns a
# candidate reads, one row per campaign, so a candidate costs one or two cache lines.
PRICE_BID, PRICE_SHADING, PRICE_MAX_BID, PRICE_MODEL = range(4)
(CHECK_BUDGET_TOTAL, CHECK_BUDGET_DAILY, CHECK_PACING_EVEN, CHECK_FLIGHT_START,
 CHECK_FLIGHT_END, CHECK_FREQUENCY_CAP, CHECK_FREQUENCY_WINDOW, CHECK_MAX_BID) = range(8)
# The largest max bid, $4,294.967295 CPM: evaluate ranks a candidate by one int64 key,
# bid << 31 | (2**31 - 1 - position), which holds any bid below 2**32 (and caps in float64
# arithmetic, exact for every integer this size and that integer + 0.5).
MAX_BID_MICROS = 2 ** 32 - 1


@dataclass(frozen=True)
class CampaignSpec:
    """One campaign as the DSP's config states it. Empty targeting tuples mean "any".

    bid_micros: CPM and vCPM campaigns bid micros per thousand (viewable) impressions; CPC
    campaigns bid micros per click. Deals: a campaign with deal ids bids only on
    opportunities carrying one of them; a campaign without deal ids bids on any opportunity
    (open auction). Even pacing spreads the daily budget over the UTC day, or, with no daily
    budget, the total budget over the flight [flight_start_s, flight_end_s).
    """
    id: str
    advertiser_domain: str
    pricing_model: str
    bid_micros: int
    max_bid_micros: int
    budget_total_micros: int
    budget_daily_micros: int = 0
    pacing: str = "asap"
    frequency_cap: int = 0
    frequency_window_s: int = 0
    shading_factor: float = 1.0
    formats: tuple[str, ...] = ()
    sizes: tuple[tuple[int, int], ...] = ()
    domains: tuple[str, ...] = ()
    device_types: tuple[int, ...] = ()
    countries: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()
    deal_ids: tuple[str, ...] = ()
    flight_start_s: int = 0
    flight_end_s: int = 0  # 0 = no flight end (always live)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def validate_specs(specs: Sequence[CampaignSpec]) -> list[str]:
    """Every problem in the specs, so one ValueError can report them all together."""
    errors: list[str] = []
    seen: set[str] = set()
    for n, s in enumerate(specs):
        where = f"campaign[{n}] {getattr(s, 'id', '?')!r}"
        if not isinstance(s, CampaignSpec):
            errors.append(f"campaign[{n}]: not a CampaignSpec")
            continue
        if not s.id:
            errors.append(f"{where}: id is empty")
        elif s.id in seen:
            errors.append(f"{where}: duplicate id")
        seen.add(s.id)
        if s.pricing_model not in PRICING_MODELS:
            errors.append(f"{where}: pricing_model must be one of {PRICING_MODELS}")
        if s.pacing not in PACING_MODES:
            errors.append(f"{where}: pacing must be one of {PACING_MODES}")
        for name in ("bid_micros", "max_bid_micros", "budget_total_micros",
                     "budget_daily_micros", "frequency_cap", "frequency_window_s",
                     "flight_start_s", "flight_end_s"):
            value = getattr(s, name)
            if not _is_int(value):
                errors.append(f"{where}: {name} must be an int (micros/seconds/count)")
            elif value < 0:
                errors.append(f"{where}: {name} must be non-negative")
        if _is_int(s.bid_micros) and _is_int(s.max_bid_micros) and s.max_bid_micros <= 0:
            errors.append(f"{where}: max_bid_micros must be positive")
        if _is_int(s.max_bid_micros) and s.max_bid_micros > MAX_BID_MICROS:
            errors.append(f"{where}: max_bid_micros must be at most {MAX_BID_MICROS} "
                          "($4,294.967295 CPM)")
        if not (isinstance(s.shading_factor, (int, float)) and 0 < s.shading_factor <= 1):
            errors.append(f"{where}: shading_factor must be in (0, 1]")
        if _is_int(s.frequency_cap) and s.frequency_cap > 0 and not (
                _is_int(s.frequency_window_s) and s.frequency_window_s > 0):
            errors.append(f"{where}: frequency_cap needs a positive frequency_window_s")
        if _is_int(s.flight_end_s) and _is_int(s.flight_start_s) and s.flight_end_s and \
                s.flight_end_s <= s.flight_start_s:
            errors.append(f"{where}: flight_end_s must be after flight_start_s")
        if s.pacing == "even" and not s.budget_daily_micros and not s.flight_end_s:
            errors.append(f"{where}: even pacing needs budget_daily_micros or a flight end")
        for f in s.formats:
            if f not in FORMATS:
                errors.append(f"{where}: unknown format {f!r}")
        for size in s.sizes:
            if not (isinstance(size, tuple) and len(size) == 2
                    and all(_is_int(x) and x > 0 for x in size)):
                errors.append(f"{where}: size {size!r} must be (w, h) positive ints")
        for d in s.device_types:
            if not _is_int(d):
                errors.append(f"{where}: device type {d!r} must be an int")
    return errors


class Vocabulary:
    """Dense ids for the values campaigns target in one dimension (exact, no hashing)."""

    def __init__(self, values: Iterable):
        self.ids: dict = {}
        for v in values:
            if v not in self.ids:
                self.ids[v] = len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, value) -> int:
        return self.ids.get(value, -1)


@dataclass(frozen=True)
class CampaignTable:
    """Struct of arrays over campaigns, index i = position in the specs.

    Money columns are int64 micros. Targeting: `targeting_bits[i, dim_start[d]:dim_end[d]]`
    is campaign i's bitset over dimension d's vocabulary; bit d of `targeting_any[i]` says
    the campaign does not target dimension d. Domains are exact: a CSR list of domain ids
    per campaign (`domain_ptr`, `domain_ids`, sorted), `domain_any` when untargeted.
    """
    specs: tuple[CampaignSpec, ...]
    ids: tuple[str, ...]
    advertiser_domain_id: np.ndarray   # int32
    advertiser_domains: tuple[str, ...]
    pricing_model: np.ndarray          # int8, MODEL_*
    bid_micros: np.ndarray             # int64
    max_bid_micros: np.ndarray         # int64
    shading_factor: np.ndarray         # float64
    budget_total_micros: np.ndarray    # int64
    budget_daily_micros: np.ndarray    # int64, 0 = none
    pacing_even: np.ndarray            # uint8
    flight_start_s: np.ndarray         # int64
    flight_end_s: np.ndarray           # int64, 0 = open
    frequency_cap: np.ndarray          # int32, 0 = none
    frequency_window_s: np.ndarray     # int64
    vocabularies: tuple[Vocabulary, ...]   # one per DIM_*
    domain_vocabulary: Vocabulary
    targeting_bits: np.ndarray         # uint64 [n, total words]
    targeting_any: np.ndarray          # uint32 [n]
    dim_start: np.ndarray              # int32 [n dims]
    dim_end: np.ndarray                # int32 [n dims]
    domain_ptr: np.ndarray             # int64 [n + 1]
    domain_ids: np.ndarray             # int32
    domain_any: np.ndarray             # uint8 [n]
    index: TargetingIndex
    kernel: KernelArrays               # the index and static_bits as evaluate reads them
    static_bits: np.ndarray            # uint64 [4, words]: STATIC_* rows
    price_record: np.ndarray           # float64 [n, 4]: PRICE_* columns
    check_record: np.ndarray           # int64 [n, 8]: CHECK_* columns

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_specs(cls, specs: Sequence[CampaignSpec]) -> "CampaignTable":
        specs = tuple(specs)
        errors = validate_specs(specs)
        if errors:
            raise ValueError("invalid campaign specs:\n  " + "\n  ".join(errors))
        n = len(specs)
        per_dim = [
            [s.formats for s in specs],
            [s.sizes for s in specs],
            [s.device_types for s in specs],
            [s.countries for s in specs],
            [s.categories for s in specs],
            [s.segments for s in specs],
            [s.deal_ids for s in specs],
        ]
        vocabularies = tuple(Vocabulary(v for values in dim for v in values)
                             for dim in per_dim)
        widths = [max(1, (len(v) + 63) // 64) for v in vocabularies]
        dim_start = np.zeros(len(widths), np.int32)
        dim_end = np.zeros(len(widths), np.int32)
        offset = 0
        for d, w in enumerate(widths):
            dim_start[d], dim_end[d] = offset, offset + w
            offset += w
        bits = np.zeros((n, offset), np.uint64)
        any_mask = np.zeros(n, np.uint32)
        entries = []  # per dim: (value ids, campaign ids) of every targeting entry
        for d, dim in enumerate(per_dim):
            vocab = vocabularies[d]
            value_ids, campaign_ids = [], []
            for i, values in enumerate(dim):
                if not values:
                    any_mask[i] |= np.uint32(1 << d)
                for v in values:
                    b = vocab.ids[v]
                    bits[i, dim_start[d] + b // 64] |= np.uint64(1) << np.uint64(b % 64)
                    value_ids.append(b)
                    campaign_ids.append(i)
            entries.append((np.array(value_ids, np.int64), np.array(campaign_ids, np.int64)))

        domain_vocab = Vocabulary(d for s in specs for d in s.domains)
        ptr = np.zeros(n + 1, np.int64)
        ids_list: list[int] = []
        for i, s in enumerate(specs):
            ids_list.extend(sorted({domain_vocab.ids[d] for d in s.domains}))
            ptr[i + 1] = len(ids_list)
        adv_vocab = Vocabulary(s.advertiser_domain for s in specs)
        domain_ids = np.array(ids_list, np.int32)
        domain_any = np.array([not s.domains for s in specs], np.bool_)

        def untargeted(d):
            return (any_mask >> np.uint32(d)) & 1 == 1

        def accepts(d):
            m = np.zeros((n, len(vocabularies[d])), np.bool_)
            m[entries[d][1], entries[d][0]] = True
            return m

        index = TargetingIndex.build(
            n,
            [(accepts(d), untargeted(d), len(vocabularies[d])) for d in range(INDEXED_DIMS)],
            [(*entries[d], untargeted(d), len(vocabularies[d]))
             for d in (DIM_CATEGORY, DIM_SEGMENT, DIM_DEAL)]
            + [(domain_ids, np.repeat(np.arange(n), np.diff(ptr)), domain_any,
                len(domain_vocab))])

        def col(name, dtype):
            return np.ascontiguousarray([getattr(s, name) for s in specs], dtype=dtype)

        pricing_model = np.array([PRICING_MODELS.index(s.pricing_model) for s in specs],
                                 np.int8)
        pacing_even = np.array([s.pacing == "even" for s in specs], np.uint8)
        budget_total = col("budget_total_micros", np.int64)
        flight_end = col("flight_end_s", np.int64)
        frequency_cap = col("frequency_cap", np.int32)
        static_bits = pack_campaign_bits(np.stack([
            budget_total <= 0, flight_end > 0, pacing_even != 0, frequency_cap > 0])
            if n else np.zeros((4, 0), np.bool_), n)
        price_record = np.zeros((n, 4), np.float64)
        price_record[:, PRICE_BID] = col("bid_micros", np.int64)
        price_record[:, PRICE_SHADING] = col("shading_factor", np.float64)
        price_record[:, PRICE_MAX_BID] = col("max_bid_micros", np.int64)
        price_record[:, PRICE_MODEL] = pricing_model
        check_record = np.zeros((n, 8), np.int64)
        for k, name in ((CHECK_BUDGET_TOTAL, "budget_total_micros"),
                        (CHECK_BUDGET_DAILY, "budget_daily_micros"),
                        (CHECK_FLIGHT_START, "flight_start_s"), (CHECK_FLIGHT_END, "flight_end_s"),
                        (CHECK_FREQUENCY_CAP, "frequency_cap"),
                        (CHECK_FREQUENCY_WINDOW, "frequency_window_s"),
                        (CHECK_MAX_BID, "max_bid_micros")):
            check_record[:, k] = col(name, np.int64)
        check_record[:, CHECK_PACING_EVEN] = pacing_even
        # What evaluate reads per opportunity, in its two index arrays and in huge pages
        # (see hugepages); the index and static bits become views of them.
        kernel = KernelArrays.build(index, static_bits)
        words, postings, price_record, check_record = hugepages.pack(
            [kernel.words, kernel.postings, price_record, check_record])
        kernel = KernelArrays(words, postings)
        index, static_bits = kernel.views(index)

        return cls(
            specs=specs,
            ids=tuple(s.id for s in specs),
            advertiser_domain_id=np.array([adv_vocab.ids[s.advertiser_domain] for s in specs],
                                          np.int32),
            advertiser_domains=tuple(adv_vocab.ids),
            pricing_model=pricing_model,
            bid_micros=col("bid_micros", np.int64),
            max_bid_micros=col("max_bid_micros", np.int64),
            shading_factor=col("shading_factor", np.float64),
            budget_total_micros=budget_total,
            budget_daily_micros=col("budget_daily_micros", np.int64),
            pacing_even=pacing_even,
            flight_start_s=col("flight_start_s", np.int64),
            flight_end_s=flight_end,
            frequency_cap=frequency_cap,
            frequency_window_s=col("frequency_window_s", np.int64),
            vocabularies=vocabularies,
            domain_vocabulary=domain_vocab,
            targeting_bits=bits,
            targeting_any=any_mask,
            dim_start=dim_start,
            dim_end=dim_end,
            domain_ptr=ptr,
            domain_ids=domain_ids,
            domain_any=domain_any.astype(np.uint8),
            index=index,
            kernel=kernel,
            static_bits=static_bits,
            price_record=price_record,
            check_record=check_record,
        )


def campaign_words(n: int) -> int:
    """Words of a bitmap over n campaigns (the targeting index's layout)."""
    return max(1, (n + 63) // 64)


def pack_campaign_bits(mask: np.ndarray, n: int) -> np.ndarray:
    """bool [rows, n] -> uint64 [rows, campaign_words(n)], bit c % 64 of word c // 64."""
    rows = mask.shape[0]
    padded = np.zeros((rows, campaign_words(n) * 64), np.bool_)
    padded[:, :n] = mask
    return np.ascontiguousarray(
        np.packbits(padded, axis=1, bitorder="little").view(np.uint64))


# Rows of the per-campaign mutable state (one int64 array each, see CampaignState).
@dataclass
class CampaignState:
    """Mutable per-campaign counters, aligned with a CampaignTable's index.

    daily_spend_micros is the pacing state: spend since the start of the current UTC day
    (reset by the engine at the day boundary). exhausted: bit 0 total budget spent, bit 1
    daily budget spent.

    flag_bits are derived from the counters and kept in step by every writer (accrue, the
    day roll-over, replace; accrue.refresh_flags after editing counters by hand), in the
    targeting index's word layout: row FLAG_BUDGET = the budget check fails (any budget
    spent: exhausted, total or daily); row FLAG_SPENT = an even-paced campaign with any
    spend or daily spend, the only ones pacing can hold back once the day has started.
    """
    spend_micros: np.ndarray
    daily_spend_micros: np.ndarray
    impressions: np.ndarray
    viewables: np.ndarray
    clicks: np.ndarray
    exhausted: np.ndarray   # uint8
    flag_bits: np.ndarray   # uint64 [2, words]: FLAG_* rows

    @classmethod
    def zeros(cls, n: int) -> "CampaignState":
        """All counters zero. A zero budget is in the table's STATIC_NO_BUDGET row, so
        zero flags agree with zero counters for every table."""
        return cls(*(np.zeros(n, np.int64) for _ in range(5)), np.zeros(n, np.uint8),
                   np.zeros((2, campaign_words(n)), np.uint64))


FLAG_BUDGET, FLAG_SPENT = 0, 1


EXHAUSTED_TOTAL = 1
EXHAUSTED_DAILY = 2
