"""PricingEngine: what the DSP holds. Owns the current CampaignTable and the mutable
per-campaign state, and routes every bid decision (evaluate) and every spend (accrue)
through the kernels. Batch entry points: `opportunity_rows` + `evaluate_rows` build a batch
from parts looked up once (a bid request's context, an Imp, a size) with no per-opportunity
objects, and `accrue_batch` books many events with a user key per event.

Threads: several gRPC workers call evaluate concurrently while accrue runs now and then.
Kernels release the GIL. evaluate takes the current generation (table + state + frequency
table) as one reference and reads state without the lock, so it may see spend and counts
up to one accrue call stale (a campaign can win one more bid than its budget strictly
allows; accrue still books every event). accrue, the day roll-over and replace mutate
under one lock; replace swaps the whole generation in a single assignment.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np

from . import accrue as _accrue
from . import clear as _clear
from . import evaluate as _evaluate
from . import frequency as _frequency
from .accrue import BILLED_IMPRESSION, CLICK, VIEWABLE  # noqa: F401 (re-exported)
from .campaigns import (DIM_CATEGORY, DIM_DEAL, DIM_SEGMENT, INDEXED_DIMS, SET_DIM_NAMES,
                        CampaignSpec, CampaignState, CampaignTable)
from .evaluate import REASON_NAMES
from .opportunities import (AUCTION_FIRST_PRICE, AUCTION_SECOND_PRICE, Opportunity,
                            OpportunityBatch)

SECONDS_PER_DAY = 86400


@dataclass(frozen=True)
class Evaluation:
    campaign: np.ndarray           # int64, -1 = no bid
    bid_micros: np.ndarray         # int64 CPM-equivalent bid after shading (0 if none)
    second_campaign: np.ndarray    # int64, -1 = none
    second_bid_micros: np.ndarray  # int64
    no_bid_reason: np.ndarray      # int64 index into reason_names (0 = "none": a bid)
    reason_counts: np.ndarray      # int64 per reason, over (opportunity, campaign) pairs
    reason_names: tuple[str, ...] = REASON_NAMES


class RowEvaluation(NamedTuple):
    """Evaluation's per-opportunity results as Python lists (and reason_counts), for a
    caller that built its batch row by row in Python and reads it back the same way."""
    campaign: list[int]
    bid_micros: list[int]
    second_campaign: list[int]
    second_bid_micros: list[int]
    no_bid_reason: list[int]
    reason_counts: list[int]


class RowEncoder:
    """One CampaignTable's vocabularies as the ids an opportunity row holds (the layout of
    OpportunityBatch.rows), from plain dicts: a caller building rows from shared parts
    looks each part up once. Exactly OpportunityBatch.encode's ids: a single-valued
    dimension's accept row (the untargeted row for a value no campaign targets), and a set
    dimension's postings of the known values, ascending, unknown values left out."""

    def __init__(self, table: CampaignTable):
        index = table.index
        self._single = tuple(
            {value: int(index.row0[d]) + b for value, b in table.vocabularies[d].ids.items()}
            for d in range(INDEXED_DIMS))
        self._untargeted = tuple(int(index.row0[d] + index.vocab_size[d])
                                 for d in range(INDEXED_DIMS))
        set_vocabularies = [table.vocabularies[d] for d in (DIM_CATEGORY, DIM_SEGMENT, DIM_DEAL)]
        set_vocabularies.append(table.domain_vocabulary)  # SET_DIM_NAMES order
        self._postings = tuple({value: int(index.posting0[s]) + b for value, b in v.ids.items()}
                               for s, v in enumerate(set_vocabularies))

    def single(self, dim: int, value) -> int:
        """The accept row of `value` in single-valued dimension `dim` (DIM_FORMAT: a
        format name, DIM_SIZE: (w, h), DIM_DEVICE: an AdCOM device type, DIM_COUNTRY)."""
        return self._single[dim].get(value, self._untargeted[dim])

    def postings(self, set_dim: int, values) -> tuple[int, ...]:
        """The postings of `values` in set dimension `set_dim` (SET_* order)."""
        ids = self._postings[set_dim]
        known = [ids[v] for v in values if v in ids]
        return tuple(known) if len(known) < 2 else tuple(sorted(set(known)))


class _KernelRows(NamedTuple):
    """The three opportunity arrays evaluate's kernel reads (OpportunityBatch's names)."""
    rows: np.ndarray
    ints: np.ndarray
    floats: np.ndarray


@dataclass(frozen=True)
class _Generation:
    table: CampaignTable
    state: CampaignState
    encoder: RowEncoder


class OpportunityRows:
    """Opportunities as evaluate's kernel reads them (OpportunityBatch's rows, ints and
    floats, nothing else), added row by row with ids from `encoder`, for one generation of
    the engine's campaigns: `PricingEngine.evaluate_rows` evaluates them against it."""

    __slots__ = ("encoder", "_generation", "_single", "_sets", "_ints", "_floats")

    def __init__(self, generation: _Generation):
        self.encoder = generation.encoder
        self._generation = generation
        self._single: list[tuple[int, int, int, int]] = []
        self._sets: list[tuple[tuple[int, ...], ...]] = []
        self._ints: list[tuple[int, int, int]] = []
        self._floats: list[tuple[float, float]] = []

    def __len__(self) -> int:
        return len(self._ints)

    def add(self, single: tuple[int, int, int, int], sets: tuple[tuple[int, ...], ...],
            floor_micros: int, user_key_hash: int, auction_type: int,
            predicted_viewability: float, predicted_ctr: float) -> None:
        """One opportunity: its single-valued accept rows (DIM_* order), its postings per
        set dimension (SET_* order), and the values pricing reads. Refused as
        OpportunityBatch.encode refuses them."""
        if auction_type != AUCTION_FIRST_PRICE and auction_type != AUCTION_SECOND_PRICE:
            raise ValueError(f"auction_type must be 1 or 2, got {auction_type!r}")
        if floor_micros < 0:
            raise ValueError(f"floor_micros must be non-negative, got {floor_micros}")
        if not (0.0 <= predicted_viewability <= 1.0 and 0.0 <= predicted_ctr <= 1.0):  # NaN too
            raise ValueError(f"predictions must be probabilities in [0, 1], got "
                             f"{predicted_viewability!r}, {predicted_ctr!r}")
        self._single.append(single)
        self._sets.append(sets)
        self._ints.append((floor_micros, user_key_hash, auction_type))
        self._floats.append((predicted_viewability, predicted_ctr))

    def arrays(self) -> _KernelRows:
        """rows, ints and floats as OpportunityBatch holds them: set postings -1 padded to
        the widest list in the batch (at least 1)."""
        width = 1
        for sets in self._sets:
            for postings in sets:
                if len(postings) > width:
                    width = len(postings)
        pad = (-1,) * width
        flat: list[int] = []  # one flat list converts faster than nested rows
        for single, (a, b, c, d) in zip(self._single, self._sets):
            flat += single
            flat += (a + pad)[:width]
            flat += (b + pad)[:width]
            flat += (c + pad)[:width]
            flat += (d + pad)[:width]
        n = len(self._ints)
        columns = INDEXED_DIMS + len(SET_DIM_NAMES) * width
        return _KernelRows(np.array(flat, np.int32).reshape(n, columns),
                           np.array(self._ints, np.int64).reshape(n, 3),
                           np.array(self._floats, np.float64).reshape(n, 2))


class PricingEngine:
    def __init__(self, specs: Sequence[CampaignSpec], *,
                 clock: Callable[[], float] = time.time, parallel_threshold: int = 64):
        self._clock = clock
        self._lock = threading.Lock()
        table = CampaignTable.from_specs(specs)
        state = CampaignState.zeros(len(table))
        _accrue.refresh_flags(table.budget_total_micros, table.budget_daily_micros,
                              table.pacing_even, state.spend_micros, state.daily_spend_micros,
                              state.exhausted, state.flag_bits)
        self._generation = _Generation(table, state, RowEncoder(table))
        self._frequency = _frequency.FrequencyTable.empty()
        self._day = math.floor(clock() / SECONDS_PER_DAY)
        self._parallel_threshold = parallel_threshold

    # -- reading -----------------------------------------------------------------------
    @property
    def table(self) -> CampaignTable:
        return self._generation.table

    def encode(self, opportunities: Sequence[Opportunity]) -> OpportunityBatch:
        return OpportunityBatch.encode(self._generation.table, opportunities)

    def evaluate(self, batch: OpportunityBatch | Sequence[Opportunity], *,
                 parallel: bool | None = None) -> Evaluation:
        now_s = float(self._clock())
        self._roll_day(now_s)
        generation = self._generation
        if not isinstance(batch, OpportunityBatch):
            batch = OpportunityBatch.encode(generation.table, batch)
        elif batch.feature_bits.shape[1] != generation.table.targeting_bits.shape[1] or \
                len(batch.index_rows) and (
                    batch.index_rows.max() >= len(generation.table.index.bits)
                    or batch.set_rows.max() >= generation.table.index.n_postings):
            raise ValueError("batch was encoded against another campaign table")
        results, reason_counts = self._evaluate(generation, batch, now_s, parallel)
        return Evaluation(*results, reason_counts)

    def opportunity_rows(self) -> OpportunityRows:
        """An empty batch for `evaluate_rows`, its ids from the current campaign table."""
        return OpportunityRows(self._generation)

    def evaluate_rows(self, rows: OpportunityRows, *, parallel: bool | None = None) -> RowEvaluation:
        """evaluate, for a batch built with `opportunity_rows`, against the campaigns its ids
        came from (a replace in between leaves this one call a generation behind, the
        staleness evaluate already allows); the results come back as Python lists."""
        now_s = float(self._clock())
        self._roll_day(now_s)
        results, reason_counts = self._evaluate(rows._generation, rows.arrays(), now_s, parallel)
        return RowEvaluation(*results.tolist(), reason_counts.tolist())

    def _evaluate(self, generation: _Generation, batch: OpportunityBatch | _KernelRows,
                  now_s: float, parallel: bool | None) -> tuple[np.ndarray, np.ndarray]:
        """The kernel's outputs: results (RESULT_* rows) and reason_counts."""
        outputs = _evaluate.new_outputs(len(batch.ints))
        day_start_s = float(math.floor(now_s / SECONDS_PER_DAY) * SECONDS_PER_DAY)
        args = _evaluate.evaluate_args(generation.table, generation.state, self._frequency, batch,
                                       now_s, day_start_s, outputs)
        if parallel is None:
            parallel = len(batch.ints) >= self._parallel_threshold
        if parallel:
            _evaluate.evaluate_batch_parallel(_evaluate.parallel_chunks(), *args)
        else:
            _evaluate.evaluate_batch(*args)
        return outputs

    def snapshot(self) -> dict:
        with self._lock:
            g = self._generation
            s = g.state
            return {"ids": g.table.ids, "spend_micros": s.spend_micros.copy(),
                    "daily_spend_micros": s.daily_spend_micros.copy(),
                    "impressions": s.impressions.copy(), "viewables": s.viewables.copy(),
                    "clicks": s.clicks.copy(), "exhausted": s.exhausted.copy()}

    def exhausted_campaigns(self) -> int:
        """Campaigns whose total or daily budget is spent (read without copying the state,
        for a metrics scrape)."""
        return int(np.count_nonzero(self._generation.state.exhausted))

    # -- writing -----------------------------------------------------------------------
    def accrue(self, campaign, price_micros, kind, user_key_hash=None) -> int:
        """Book events (arrays or scalars). Billed impressions with a user key hash also
        count toward frequency caps. Returns the number of rejected events."""
        campaign, price, kind = _event_arrays(campaign, price_micros, kind)
        users = None
        if user_key_hash is not None:
            users = np.atleast_1d(np.asarray(user_key_hash, np.int64))
            if users.shape != campaign.shape:
                users = np.broadcast_to(users, campaign.shape)
        return self._book(campaign, price, kind, users, None)

    def accrue_batch(self, campaign, price_micros, kind, user_key_hash, *, at_s: float | None = None) -> int:
        """accrue for a batch whose events each carry their own user key hash, 0 for an
        event without a user (it counts toward no frequency cap): one call books what
        accrue, called once per event in the same order, books. `at_s` books them at
        that time instead of now: replaying a ledger's accruals, oldest first, rebuilds
        spend, daily spend, counters and frequency windows exactly as they were booked."""
        campaign, price, kind = _event_arrays(campaign, price_micros, kind)
        users = np.asarray(user_key_hash, np.int64)
        if users.shape != campaign.shape:
            raise ValueError("user_key_hash must have one entry per event")
        return self._book(campaign, price, kind, users, users != 0, at_s)

    def _book(self, campaign: np.ndarray, price: np.ndarray, kind: np.ndarray,
              users: np.ndarray | None, has_user: np.ndarray | None, at_s: float | None = None) -> int:
        now_s = self._clock() if at_s is None else at_s
        self._roll_day(now_s)
        with self._lock:
            g = self._generation
            t, s = g.table, g.state
            rejected = _accrue.accrue_events(
                campaign, price, kind, t.pricing_model, t.budget_total_micros,
                t.budget_daily_micros, s.spend_micros, s.daily_spend_micros, s.impressions,
                s.viewables, s.clicks, s.exhausted, t.pacing_even, s.flag_bits)
            if users is not None:
                capped = (kind == BILLED_IMPRESSION) & (campaign >= 0) & (
                    campaign < len(t)) & (price >= 0)
                if has_user is not None:
                    capped &= has_user
                capped[capped] = t.frequency_cap[campaign[capped]] > 0
                if capped.any():
                    c = np.ascontiguousarray(campaign[capped])
                    self._frequency = _frequency.grown(self._frequency, len(c),
                                                       n_campaigns=len(t))
                    _frequency.frequency_record(
                        *self._frequency.arrays(), np.ascontiguousarray(users[capped]), c,
                        np.ascontiguousarray(t.frequency_window_s[c]), np.int64(now_s))
        return int(rejected)

    def replace(self, specs: Sequence[CampaignSpec]) -> None:
        """Swap in a new campaign set. Campaigns whose id persists keep their spend,
        counters, exhausted flags and frequency entries; new ones start at zero. The new
        specs are validated before anything changes."""
        table = CampaignTable.from_specs(specs)
        with self._lock:
            old = self._generation
            old_index = {cid: i for i, cid in enumerate(old.table.ids)}
            remap = np.full(len(old.table), -1, np.int32)
            state = CampaignState.zeros(len(table))
            for new_i, cid in enumerate(table.ids):
                old_i = old_index.get(cid)
                if old_i is None:
                    continue
                remap[old_i] = new_i
                for name in ("spend_micros", "daily_spend_micros", "impressions",
                             "viewables", "clicks"):
                    getattr(state, name)[new_i] = getattr(old.state, name)[old_i]
            # Budgets may have changed: recompute exhausted flags from the new budgets.
            state.exhausted[:] = np.where(state.spend_micros >= table.budget_total_micros, 1, 0)
            state.exhausted |= np.where((table.budget_daily_micros > 0) & (
                state.daily_spend_micros >= table.budget_daily_micros), 2, 0).astype(np.uint8)
            _accrue.refresh_flags(table.budget_total_micros, table.budget_daily_micros,
                                  table.pacing_even, state.spend_micros,
                                  state.daily_spend_micros, state.exhausted, state.flag_bits)
            self._frequency = _frequency.grown(self._frequency, 0, remap=remap)
            self._generation = _Generation(table, state, RowEncoder(table))

    def _roll_day(self, now_s: float) -> None:
        day = math.floor(now_s / SECONDS_PER_DAY)
        if day == self._day:
            return
        with self._lock:
            if day != self._day:
                g = self._generation
                _accrue.start_day(g.table.budget_total_micros, g.state.spend_micros,
                                  g.state.daily_spend_micros, g.state.exhausted,
                                  g.table.budget_daily_micros, g.table.pacing_even,
                                  g.state.flag_bits)
                self._day = day

    # -- start-up ----------------------------------------------------------------------
    def warm(self) -> float:
        """Compile or load from cache every kernel the engine calls, on throwaway arrays
        of the runtime dtypes, so no request pays for compilation. Returns seconds."""
        started = time.perf_counter()
        warm_kernels()
        return time.perf_counter() - started


def _event_arrays(campaign, price_micros, kind) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """accrue's event columns as the kernel takes them, kind broadcast to every event."""
    campaign = np.atleast_1d(np.asarray(campaign, np.int32))
    price = np.atleast_1d(np.asarray(price_micros, np.int64))
    kind = np.atleast_1d(np.asarray(kind, np.int8))
    if kind.shape != campaign.shape:
        kind = np.broadcast_to(kind, campaign.shape).copy()
    if not (campaign.shape == price.shape == kind.shape):
        raise ValueError("campaign, price_micros and kind must have one length")
    return campaign, price, kind


def warm_kernels() -> None:
    spec = CampaignSpec(id="warm", advertiser_domain="warm.example", pricing_model="cpm",
                        bid_micros=1000, max_bid_micros=2000, budget_total_micros=10 ** 6,
                        frequency_cap=1, frequency_window_s=60, formats=("banner",))
    table = CampaignTable.from_specs([spec])
    opp = Opportunity("banner", 300, 250, "d", 2, "USA", (), (), (), 0, "u", 0.5, 0.01, 1)
    batch = OpportunityBatch.encode(table, [opp])
    state = CampaignState.zeros(1)
    freq = _frequency.FrequencyTable.empty(16)
    args = _evaluate.evaluate_args(table, state, freq, batch, 1.0, 0.0,
                                   _evaluate.new_outputs(1))
    _evaluate.evaluate_batch(*args)
    _evaluate.evaluate_batch_parallel(_evaluate.parallel_chunks(), *args)
    _accrue.accrue_events(np.zeros(1, np.int32), np.zeros(1, np.int64), np.zeros(1, np.int8),
                          table.pricing_model, table.budget_total_micros,
                          table.budget_daily_micros, state.spend_micros,
                          state.daily_spend_micros, state.impressions, state.viewables,
                          state.clicks, state.exhausted, table.pacing_even, state.flag_bits)
    _accrue.start_day(table.budget_total_micros, state.spend_micros,
                      state.daily_spend_micros, state.exhausted, table.budget_daily_micros,
                      table.pacing_even, state.flag_bits)
    _accrue.refresh_flags(table.budget_total_micros, table.budget_daily_micros,
                          table.pacing_even, state.spend_micros, state.daily_spend_micros,
                          state.exhausted, state.flag_bits)
    users = np.zeros(1, np.int64)
    campaigns = np.zeros(1, np.int32)
    windows = np.ones(1, np.int64)
    _frequency.frequency_record(*freq.arrays(), users, campaigns, windows, np.int64(0))
    _frequency.frequency_check(*freq.arrays(), users, campaigns, np.ones(1, np.int32),
                               windows, np.int64(0), np.zeros(1, np.bool_))
    _frequency.grown(freq, 100, n_campaigns=1)
    _clear.clear(np.array([1, 2], np.int64), 0, 2, 10)
    _clear.clear_batch(np.array([1, 2], np.int64), np.array([0, 2], np.int64),
                       np.zeros(1, np.int64), np.ones(1, np.int8), np.int64(10),
                       np.zeros(1, np.int32), np.zeros(1, np.int64), np.zeros(2, np.int64))
