"""evaluate: for each opportunity, the best and second-best eligible campaign and their
eCPM bids, plus why the others were not eligible. The DSP's bid decision; reads the
CampaignTable, the CampaignState and the frequency table, writes only its outputs.

Eligibility, checked in this order (the first failure is the pair's reason):
targeting (every dimension, exact domains included, decided by the targeting index 64
campaigns at a time), budget (total, then daily), pacing (flight window, then even pacing),
frequency cap, floor. Only campaigns that pass targeting are visited one at a time.

Bid as eCPM in micros per thousand: CPM -> bid; vCPM -> bid x predicted viewability;
CPC -> bid x predicted CTR x 1000; first price -> x shading factor. The float product is
rounded once, half up (floor(x + 0.5), x >= 0), then capped at max_bid_micros. A bid
below the floor is ineligible. Ties go to the lower campaign index, for best and second.

"Checks": one check = one (opportunity, campaign) pair decided. Pairs the targeting index
excludes count as decided (the index proves them ineligible; they are counted under the
targeting reason), so a batch is always n_opportunities x n_campaigns checks.
"""
from __future__ import annotations

import numba
import numpy as np
from numba.core import types
from numba.core.extending import intrinsic

from ._jit import kernel

REASON_NAMES = ("none", "no_campaigns", "targeting", "budget", "pacing", "frequency_cap",
                "below_floor")
(REASON_NONE, REASON_NO_CAMPAIGNS, REASON_TARGETING, REASON_BUDGET, REASON_PACING,
 REASON_FREQUENCY, REASON_FLOOR) = range(len(REASON_NAMES))
N_REASONS = len(REASON_NAMES)

_MODEL_VCPM = 1   # campaigns.MODEL_VCPM (kept literal: cached kernels freeze globals)
_MODEL_CPC = 2    # campaigns.MODEL_CPC
_FIRST_PRICE = 1  # OpenRTB BidRequest.at
_SECONDS_PER_DAY = 86400.0


@intrinsic
def _cttz(typingctx, x):
    """Count trailing zeros of a uint64 (LLVM cttz): walks set bits of a bitmap word."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], context.get_constant(types.boolean, False))

    return sig, codegen


@kernel()
def _frequency_slot_hash(user_hash, campaign):
    # Same mix as frequency._slot_hash: a cached kernel's helpers live in its own file.
    h = np.uint64(user_hash) * np.uint64(0x9E3779B97F4A7C15)
    h ^= np.uint64(campaign) * np.uint64(0xC2B2AE3D27D4EB4F)
    h ^= h >> np.uint64(31)
    return h


@kernel()
def _frequency_count(ft_user, ft_campaign, ft_count, ft_start, user_hash, campaign, now_s,
                     window_s):
    """Impressions of `campaign` to `user_hash` in the current window (0 when absent or
    the window has expired). Linear probing; the table is never full (load <= 1/2)."""
    mask = np.uint64(len(ft_campaign) - 1)
    slot = np.int64(_frequency_slot_hash(user_hash, campaign) & mask)
    for _ in range(len(ft_campaign)):
        c = ft_campaign[slot]
        if c < 0:
            return 0
        if c == campaign and ft_user[slot] == user_hash:
            if now_s - ft_start[slot] >= window_s:
                return 0
            return ft_count[slot]
        slot = np.int64(np.uint64(slot + 1) & mask)
    return 0


@kernel()
def _targeted_words(i, index_bits, untargeted, posting_ptr, posting_word, posting_bits,
                    index_rows, set_rows, acc, tmp):
    """Opportunity i's targeting as a bitmap over campaigns, 64 per word: the AND of its
    single-dimension accept rows, then per set dimension the AND with (untargeted OR the
    postings of each of its values). Returns the array holding the result (acc or tmp)."""
    n_words = acc.shape[0]
    r0 = index_rows[i, 0]
    for j in range(n_words):
        acc[j] = index_bits[r0, j]
    for d in range(1, index_rows.shape[1]):
        r = index_rows[i, d]
        for j in range(n_words):
            acc[j] &= index_bits[r, j]
    for d in range(set_rows.shape[1]):
        for j in range(n_words):
            tmp[j] = acc[j] & untargeted[d, j]
        for k in range(set_rows.shape[2]):
            p = set_rows[i, d, k]
            if p < 0:
                break
            for e in range(posting_ptr[p], posting_ptr[p + 1]):
                j = posting_word[e]
                tmp[j] |= acc[j] & posting_bits[e]
        acc, tmp = tmp, acc
    return acc


@kernel()
def _evaluate_range(lo, hi,
                    index_bits, untargeted, posting_ptr, posting_word, posting_bits,
                    pricing_model, bid_micros, max_bid_micros, shading_factor,
                    budget_total_micros, budget_daily_micros, pacing_even, flight_start_s,
                    flight_end_s, frequency_cap, frequency_window_s,
                    spend_micros, daily_spend_micros, exhausted,
                    ft_user, ft_campaign, ft_count, ft_start,
                    index_rows, set_rows, floor_micros, user_key_hash,
                    predicted_viewability, predicted_ctr, auction_type,
                    now_s, day_start_s,
                    out_campaign, out_bid, out_second, out_second_bid, out_reason,
                    reason_counts):
    n_campaigns = len(bid_micros)
    n_words = index_bits.shape[1]
    scratch_a = np.empty(n_words, np.uint64)
    scratch_b = np.empty(n_words, np.uint64)
    now_whole_s = np.int64(now_s)
    for i in range(lo, hi):
        best = -1
        best_bid = np.int64(-1)
        second = -1
        second_bid = np.int64(-1)
        candidates = 0
        n_budget = 0
        n_pacing = 0
        n_frequency = 0
        n_floor = 0
        n_eligible = 0
        floor = floor_micros[i]
        first_price = auction_type[i] == _FIRST_PRICE
        # Targeting is decided whole by the index; only surviving campaigns are visited.
        words = _targeted_words(i, index_bits, untargeted, posting_ptr, posting_word,
                                posting_bits, index_rows, set_rows, scratch_a, scratch_b)
        for w in range(n_words):
            word = words[w]
            while word != 0:
                c = w * 64 + np.int64(_cttz(word))
                word &= word - np.uint64(1)
                candidates += 1
                # Budget: a campaign bids while any budget remains; the last event
                # may overshoot by at most its own price.
                daily = budget_daily_micros[c]
                if exhausted[c] != 0 or spend_micros[c] >= budget_total_micros[c] or (
                        daily > 0 and daily_spend_micros[c] >= daily):
                    n_budget += 1
                    continue
                # Pacing: flight window, then even pacing (spend may not run ahead of
                # the elapsed fraction of the day, or of the flight).
                fs = flight_start_s[c]
                fe = flight_end_s[c]
                if fe > 0 and (now_s < fs or now_s >= fe):
                    n_pacing += 1
                    continue
                if pacing_even[c] != 0:
                    if daily > 0:
                        fraction = (now_s - day_start_s) / _SECONDS_PER_DAY
                        paced = np.float64(daily_spend_micros[c]) > np.float64(daily) * fraction
                    else:
                        fraction = (now_s - fs) / np.float64(fe - fs)
                        paced = np.float64(spend_micros[c]) > \
                            np.float64(budget_total_micros[c]) * fraction
                    if paced:
                        n_pacing += 1
                        continue
                cap = frequency_cap[c]
                if cap > 0 and _frequency_count(
                        ft_user, ft_campaign, ft_count, ft_start, user_key_hash[i], c,
                        now_whole_s, frequency_window_s[c]) >= cap:
                    n_frequency += 1
                    continue
                # eCPM, one rounding (floor(x + 0.5)), capped at max bid.
                x = np.float64(bid_micros[c])
                model = pricing_model[c]
                if model == _MODEL_VCPM:
                    x = x * predicted_viewability[i]
                elif model == _MODEL_CPC:
                    x = x * predicted_ctr[i] * 1000.0
                if first_price:
                    x = x * shading_factor[c]
                max_bid = max_bid_micros[c]
                if x >= np.float64(max_bid):
                    bid = max_bid
                else:
                    bid = np.int64(np.floor(x + 0.5))
                if bid < floor:
                    n_floor += 1
                    continue
                n_eligible += 1
                if bid > best_bid:
                    second = best
                    second_bid = best_bid
                    best = c
                    best_bid = bid
                elif bid > second_bid:
                    second = c
                    second_bid = bid
        out_campaign[i] = best
        out_bid[i] = best_bid if best >= 0 else 0
        out_second[i] = second
        out_second_bid[i] = second_bid if second >= 0 else 0
        # The dominant no-bid reason is the latest stage any campaign reached.
        if best >= 0:
            reason = REASON_NONE
        elif n_campaigns == 0:
            reason = REASON_NO_CAMPAIGNS
        elif n_floor > 0:
            reason = REASON_FLOOR
        elif n_frequency > 0:
            reason = REASON_FREQUENCY
        elif n_pacing > 0:
            reason = REASON_PACING
        elif n_budget > 0:
            reason = REASON_BUDGET
        else:
            reason = REASON_TARGETING
        out_reason[i] = reason
        reason_counts[REASON_NONE] += n_eligible
        reason_counts[REASON_TARGETING] += n_campaigns - candidates
        reason_counts[REASON_BUDGET] += n_budget
        reason_counts[REASON_PACING] += n_pacing
        reason_counts[REASON_FREQUENCY] += n_frequency
        reason_counts[REASON_FLOOR] += n_floor


@kernel()
def evaluate_batch(*args):
    """Serial evaluate over the whole batch; args as _evaluate_range without lo, hi and
    with reason_counts int64[N_REASONS]."""
    n = len(args[-6])  # out_campaign
    _evaluate_range(0, n, *args)


@kernel(parallel=True)
def evaluate_batch_parallel(chunks, *args):
    """Parallel evaluate: opportunities split into `chunks` (a few per Numba thread; the
    caller picks, as reading the thread count here would stop caching); each chunk counts
    reasons in its own row, summed at the end (no shared writes)."""
    reason_counts = args[-1]
    n = len(args[-6])  # out_campaign
    n_chunks = min(n, chunks)
    if n_chunks <= 0:
        return
    per_chunk = np.zeros((n_chunks, len(reason_counts)), np.int64)
    for k in numba.prange(n_chunks):
        lo = k * n // n_chunks
        hi = (k + 1) * n // n_chunks
        _evaluate_range(lo, hi, *args[:-1], per_chunk[k])
    for k in range(n_chunks):
        for r in range(len(reason_counts)):
            reason_counts[r] += per_chunk[k, r]


def evaluate_args(table, state, frequency_table, batch, now_s: float, day_start_s: float,
                  outputs) -> tuple:
    """The kernel's argument tuple: plain arrays and scalars, in _evaluate_range order."""
    ix = table.index
    return (ix.bits, ix.untargeted, ix.posting_ptr, ix.posting_word, ix.posting_bits,
            table.pricing_model, table.bid_micros, table.max_bid_micros, table.shading_factor,
            table.budget_total_micros, table.budget_daily_micros, table.pacing_even,
            table.flight_start_s, table.flight_end_s, table.frequency_cap,
            table.frequency_window_s,
            state.spend_micros, state.daily_spend_micros, state.exhausted,
            frequency_table.user_hash, frequency_table.campaign, frequency_table.count,
            frequency_table.window_start_s,
            batch.index_rows, batch.set_rows, batch.floor_micros,
            batch.user_key_hash, batch.predicted_viewability, batch.predicted_ctr,
            batch.auction_type, float(now_s), float(day_start_s)) + tuple(outputs)


def new_outputs(n: int) -> tuple:
    """(campaign, bid, second, second_bid, reason, reason_counts) output arrays."""
    return (np.full(n, -1, np.int32), np.zeros(n, np.int64), np.full(n, -1, np.int32),
            np.zeros(n, np.int64), np.zeros(n, np.int8), np.zeros(N_REASONS, np.int64))


def parallel_chunks() -> int:
    """Chunks per parallel call: several per thread so uneven opportunities balance."""
    return numba.get_num_threads() * 8
