"""evaluate: for each opportunity, the best and second-best eligible campaign and their
eCPM bids, plus why the others were not eligible. The DSP's bid decision; reads the
CampaignTable, the CampaignState and the frequency table, writes only its outputs.

Eligibility, checked in this order (the first failure is the pair's reason):
targeting (every dimension, exact domains included, decided by the targeting index 64
campaigns at a time), budget (total, then daily), pacing (flight window, then even pacing),
frequency cap, floor. Only campaigns that pass targeting are visited one at a time, and
budget is decided for them 64 at a time too (CampaignState.flag_bits). A candidate with no
flight window, no even pacing that could hold it back and no frequency count to look up
(CampaignTable.static_bits, flag_bits, an empty frequency table) needs only its eCPM
against the floor; the rest take every check in order. Per-reason counts stay exact:
budget failures are counted by popcount of the masked words.

Bid as eCPM in micros per thousand: CPM -> bid; vCPM -> bid x predicted viewability;
CPC -> bid x predicted CTR x 1000; first price -> x shading factor. The float product is
capped at max_bid_micros and rounded once, half up (floor(x + 0.5), x >= 0). A bid below
the floor is ineligible. Ties go to the lower campaign index, for best and second.

Per opportunity the work runs in passes without data-dependent branches where the data
is unpredictable (which campaign passes targeting, its model, whether it clears the
floor): a vectorised pass splits the targeted words into budget failures, fast and slow
candidates; a collection pass lists the fast ones' indices and asks the cache for their
price rows; pricing passes the compiler vectorises with gathers turn each fast candidate
into a unique rank key (bid, then lower index) and keep only maxima, no stores. Measured
on the benchmark world, branchy versions of these loops spent most of their time on
mispredictions, and a running top two kept in registers chained every candidate to the
one before.

"Checks": one check = one (opportunity, campaign) pair decided. Pairs the targeting index
excludes count as decided (the index proves them ineligible; they are counted under the
targeting reason), so a batch is always n_opportunities x n_campaigns checks.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.core.extending import intrinsic

from ._jit import kernel

REASON_NAMES = ("none", "no_campaigns", "targeting", "budget", "pacing", "frequency_cap",
                "below_floor")
(REASON_NONE, REASON_NO_CAMPAIGNS, REASON_TARGETING, REASON_BUDGET, REASON_PACING,
 REASON_FREQUENCY, REASON_FLOOR) = range(len(REASON_NAMES))
N_REASONS = len(REASON_NAMES)
# Rows of the results output (new_outputs): every row written for every opportunity.
RESULT_CAMPAIGN, RESULT_BID, RESULT_SECOND, RESULT_SECOND_BID, RESULT_REASON = range(5)
N_RESULTS = 5

_MODEL_VCPM = 1   # campaigns.MODEL_VCPM (kept literal: cached kernels freeze globals)
_MODEL_CPC = 2    # campaigns.MODEL_CPC
_FIRST_PRICE = 1  # OpenRTB BidRequest.at
_KEY_SHIFT = 31   # rank keys: bid << 31 | (2**31 - 1 - position in the candidate list)
_KEY_POSITION = np.int64(2 ** 31 - 1)
_SEGMENTS = 8     # fast candidate list segments: the runner-up search prices one of them,
_SEGMENT_MIN = 128  # and a segment holds at least this many (short loops cost more)
_INDEXED_DIMS = 4  # campaigns.INDEXED_DIMS
# index.LAYOUT_*: the header of KernelArrays.postings.
(_LAYOUT_UNTARGETED, _LAYOUT_DENSE, _LAYOUT_STATIC, _LAYOUT_N_SET, _LAYOUT_PTR,
 _LAYOUT_DENSE_MAP, _LAYOUT_ENTRIES) = range(7)
# opportunities.INT_* and FLOAT_*.
_INT_FLOOR, _INT_USER_KEY_HASH, _INT_AUCTION_TYPE = range(3)
_FLOAT_VIEWABILITY, _FLOAT_CTR = range(2)
_SECONDS_PER_DAY = 86400.0
# campaigns.STATIC_*, FLAG_*, PRICE_* and CHECK_* (literal for the same reason).
_STATIC_NO_BUDGET, _STATIC_FLIGHT, _STATIC_EVEN, _STATIC_CAPPED = 0, 1, 2, 3
_FLAG_BUDGET, _FLAG_SPENT = 0, 1
_PRICE_BID, _PRICE_SHADING, _PRICE_MAX_BID, _PRICE_MODEL = 0, 1, 2, 3
(_CHECK_BUDGET_TOTAL, _CHECK_BUDGET_DAILY, _CHECK_PACING_EVEN, _CHECK_FLIGHT_START,
 _CHECK_FLIGHT_END, _CHECK_FREQUENCY_CAP, _CHECK_FREQUENCY_WINDOW, _CHECK_MAX_BID) = range(8)


@intrinsic
def _cttz(typingctx, x):
    """Count trailing zeros of a uint64 (LLVM cttz): walks set bits of a bitmap word."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], context.get_constant(types.boolean, False))

    return sig, codegen


@intrinsic
def _popcount(typingctx, x):
    """Set bits of a uint64 (LLVM ctpop): counts 64 campaigns' pairs per instruction."""
    sig = types.int64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@intrinsic
def _prefetch_row(typingctx, ary, row):
    """Ask the cache for row `row` of a 2D C-contiguous array (LLVM prefetch, read): a
    hint with no effect on results."""
    sig = types.void(ary, types.int64)

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        stride = builder.extract_value(array.strides, 0)
        base = builder.ptrtoint(array.data, ir.IntType(64))
        address = builder.inttoptr(builder.add(base, builder.mul(args[1], stride)),
                                   ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic(
            "llvm.prefetch", [ir.IntType(8).as_pointer()],
            ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), i32, i32, i32]))
        builder.call(fn, [address, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

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


@kernel(inline=True)
def _targeted_words(i, words, postings, opp_rows, scratch):
    """Opportunity i's targeting as a bitmap over campaigns, 64 per word: the AND of its
    single-dimension accept rows, then per set dimension the AND with (untargeted OR the
    postings of each of its values). Reads the index as index.KernelArrays lays it out and
    the opportunity's rows as OpportunityBatch.rows. Works in scratch rows 0 and 1 (rows,
    not views, so nothing is reference-counted per pass) and returns the row holding the
    result."""
    n_words = scratch.shape[1]
    acc = 0
    untargeted0 = postings[_LAYOUT_UNTARGETED]
    dense0 = postings[_LAYOUT_DENSE]
    n_set = postings[_LAYOUT_N_SET]
    ptr0 = postings[_LAYOUT_PTR]
    map0 = postings[_LAYOUT_DENSE_MAP]
    entries0 = postings[_LAYOUT_ENTRIES]
    width = (opp_rows.shape[1] - _INDEXED_DIMS) // n_set if n_set else 0
    # The four single-valued dimensions in one pass.
    r0, r1, r2, r3 = opp_rows[i, 0], opp_rows[i, 1], opp_rows[i, 2], opp_rows[i, 3]
    for j in range(n_words):
        scratch[acc, j] = words[r0, j] & words[r1, j] & words[r2, j] & words[r3, j]
    for d in range(n_set):
        tmp = 1 - acc
        u = untargeted0 + d
        for j in range(n_words):
            scratch[tmp, j] = scratch[acc, j] & words[u, j]
        for k in range(width):
            p = opp_rows[i, _INDEXED_DIMS + d * width + k]
            if p < 0:
                break
            r = postings[map0 + p]
            if r >= 0:
                r += dense0
                for j in range(n_words):
                    scratch[tmp, j] |= scratch[acc, j] & words[r, j]
                continue
            for e in range(postings[ptr0 + p], postings[ptr0 + p + 1]):
                j = postings[entries0 + 2 * e]
                scratch[tmp, j] |= scratch[acc, j] & np.uint64(postings[entries0 + 2 * e + 1])
        acc = tmp
    return acc


@kernel()
def _ecpm_micros(c, price_record, viewability, ctr, shade_mul, shade_add):
    """eCPM in micros, capped at max bid, rounded once half up. The same product, in the
    same order, as reference.ecpm_micros: a factor the model lacks is 1.0 (x * 1.0 is
    exact) and the shading multiplier is shading * 1.0 + 0.0 in first price and
    shading * 0.0 + 1.0 = 1.0 in second price. Selects, not branches: the model varies
    unpredictably between candidates. int64(min(x, max) + 0.5) equals the reference's
    "max if x >= max else floor(x + 0.5)": x >= 0 (truncation is floor) and max bids are
    integers at most campaigns.MAX_BID_MICROS, so max and max + 0.5 are exact."""
    model = price_record[c, _PRICE_MODEL]
    factor = viewability if model == _MODEL_VCPM else 1.0
    factor = ctr if model == _MODEL_CPC else factor
    per_mille = 1000.0 if model == _MODEL_CPC else 1.0
    x = price_record[c, _PRICE_BID] * factor * per_mille
    x = x * (price_record[c, _PRICE_SHADING] * shade_mul + shade_add)
    return np.int64(min(x, price_record[c, _PRICE_MAX_BID]) + 0.5)


@kernel()
def _rank_key(listed, k, price_record, viewability, ctr, shade_mul, shade_add, floor):
    """Candidate k's rank key: bid << 31 | (2**31 - 1 - k), or -1 below the floor. Bids
    are at most MAX_BID_MICROS < 2**32 and k < 2**31, so the key fits an int64."""
    bid = _ecpm_micros(np.uint64(listed[k]), price_record, viewability, ctr, shade_mul,
                       shade_add)
    below = np.int64(bid < floor)
    return ((bid << _KEY_SHIFT) | (_KEY_POSITION - k)) | -below


@kernel(inline=True)
def _evaluate_range(lo, hi,
                    table_words, postings, price_record, check_record,
                    spend_micros, daily_spend_micros, flag_bits, ft_slots, ft_entries,
                    opp_rows, opp_ints, opp_floats,
                    now_s, day_start_s,
                    results, reason_counts):
    n_campaigns = price_record.shape[0]
    n_words = table_words.shape[1]
    static0 = postings[_LAYOUT_STATIC]  # the table's STATIC_* rows in table_words
    # Scratch for the whole call: the index's two rows and the slow candidates' words;
    # the candidate list starts small (single-opportunity calls pay for each allocation)
    # and grows when an opportunity has more candidates.
    scratch = np.empty((3, n_words), np.uint64)
    capacity = min(n_campaigns, 4096)
    listed = np.empty(capacity + 2, np.uint32)
    segment_tops = np.empty(_SEGMENTS, np.int64)
    now_whole_s = np.int64(now_s)
    # Which targeted campaigns need the checks after budget, per word. A campaign outside
    # these rows has no flight window, cannot be held back by pacing (even pacing with no
    # spend yet today is never ahead of pace once the day has started) and has no
    # frequency count to look up (no cap, or an empty table).
    frequency_live = ft_entries[0] > 0
    ft_user, ft_campaign, ft_count, ft_start = ft_slots[0], ft_slots[1], ft_slots[2], ft_slots[3]
    capped_mask = ~np.uint64(0) if frequency_live else np.uint64(0)
    pace_bits = flag_bits
    pace_row = _FLAG_SPENT
    if now_s < day_start_s:
        pace_bits = table_words
        pace_row = static0 + _STATIC_EVEN
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
        n_fast = 0  # fast candidates: those not eligible failed only the floor
        n_fast_eligible = 0
        n_slow = 0
        floor = opp_ints[i, _INT_FLOOR]
        viewability = opp_floats[i, _FLOAT_VIEWABILITY]
        ctr = opp_floats[i, _FLOAT_CTR]
        first_price = opp_ints[i, _INT_AUCTION_TYPE] == _FIRST_PRICE
        shade_mul = 1.0 if first_price else 0.0
        shade_add = 0.0 if first_price else 1.0
        # Targeting is decided whole by the index; only surviving campaigns are visited.
        row = _targeted_words(i, table_words, postings, opp_rows, scratch)
        # Budget, 64 campaigns at a time (a campaign bids while any budget remains; the
        # last event may overshoot by at most its own price), and the fast/slow split:
        # the targeted row keeps the fast candidates, scratch row 2 the slow ones.
        slow_any = np.uint64(0)
        for w in range(n_words):
            targeted = scratch[row, w]
            candidates += _popcount(targeted)
            over_budget = targeted & (flag_bits[_FLAG_BUDGET, w]
                                      | table_words[static0 + _STATIC_NO_BUDGET, w])
            n_budget += _popcount(over_budget)
            alive = targeted & ~over_budget
            slow_bits = (table_words[static0 + _STATIC_FLIGHT, w] | pace_bits[pace_row, w]
                         | (table_words[static0 + _STATIC_CAPPED, w] & capped_mask))
            scratch[row, w] = alive & ~slow_bits
            slow = alive & slow_bits
            scratch[2, w] = slow
            slow_any |= slow
        if candidates > capacity:
            capacity = candidates
            listed = np.empty(capacity + 2, np.uint32)
                # The fast candidates' indices, ascending. Two unconditional steps per word cover
        # most words (few campaigns per word pass targeting; a step on an empty word
        # writes past the end of the list and counts nothing), the loop the rest.
        for w in range(n_words):
            fast = scratch[row, w]
            base = w * 64
            for _ in range(2):
                c = base + np.int64(_cttz(fast))
                listed[n_fast] = c
                _prefetch_row(price_record, c)
                n_fast += np.int64(fast != 0)
                fast &= fast - np.uint64(1)
            while fast != 0:
                c = base + np.int64(_cttz(fast))
                listed[n_fast] = c
                _prefetch_row(price_record, c)
                n_fast += 1
                fast &= fast - np.uint64(1)
        if slow_any != 0:
            for w in range(n_words):
                slow = scratch[2, w]
                while slow != 0:
                    listed[n_fast + n_slow] = w * 64 + np.int64(_cttz(slow))
                    n_slow += 1
                    slow &= slow - np.uint64(1)
        # Fast candidates, priced in loops the compiler vectorises (gathers, no stores, no
        # branches). Rank keys are unique and order by bid, then by lower position (= lower
        # campaign index); -1 below the floor. One pass over the list, in segments, counts
        # the eligible and keeps each segment's largest key; the runner-up is the larger
        # of the other segments' largest and the best segment's largest below the best,
        # so only that segment is priced twice (a short list is one segment).
        n_segments = min(_SEGMENTS, max(1, n_fast // _SEGMENT_MIN))
        top = np.int64(-1)
        top_segment = 0
        for g in range(n_segments):
            seg_top = np.int64(-1)
            for k in range(g * n_fast // n_segments, (g + 1) * n_fast // n_segments):
                key = _rank_key(listed, k, price_record, viewability, ctr, shade_mul,
                                shade_add, floor)
                n_fast_eligible += np.int64(key >= 0)
                seg_top = max(seg_top, key)
            segment_tops[g] = seg_top
            if seg_top > top:
                top = seg_top
                top_segment = g
        if top >= 0:
            best = np.int64(listed[_KEY_POSITION - (top & _KEY_POSITION)])
            best_bid = top >> _KEY_SHIFT
            runner_up = np.int64(-1)
            for g in range(n_segments):
                if g != top_segment:
                    runner_up = max(runner_up, segment_tops[g])
            g = top_segment
            for k in range(g * n_fast // n_segments, (g + 1) * n_fast // n_segments):
                key = _rank_key(listed, k, price_record, viewability, ctr, shade_mul,
                                shade_add, floor)
                runner_up = max(runner_up, key if key < top else np.int64(-1))
            if runner_up >= 0:
                second = np.int64(listed[_KEY_POSITION - (runner_up & _KEY_POSITION)])
                second_bid = runner_up >> _KEY_SHIFT
        for k in range(n_slow):
            c = np.int64(listed[n_fast + k])
            # Pacing: flight window, then even pacing (spend may not run ahead of
            # the elapsed fraction of the day, or of the flight).
            fs = check_record[c, _CHECK_FLIGHT_START]
            fe = check_record[c, _CHECK_FLIGHT_END]
            if fe > 0 and (now_s < fs or now_s >= fe):
                n_pacing += 1
                continue
            if check_record[c, _CHECK_PACING_EVEN] != 0:
                daily = check_record[c, _CHECK_BUDGET_DAILY]
                if daily > 0:
                    fraction = (now_s - day_start_s) / _SECONDS_PER_DAY
                    paced = np.float64(daily_spend_micros[c]) > np.float64(daily) * fraction
                else:
                    fraction = (now_s - fs) / np.float64(fe - fs)
                    paced = np.float64(spend_micros[c]) > \
                        np.float64(check_record[c, _CHECK_BUDGET_TOTAL]) * fraction
                if paced:
                    n_pacing += 1
                    continue
            cap = check_record[c, _CHECK_FREQUENCY_CAP]
            if cap > 0 and frequency_live and _frequency_count(
                    ft_user, ft_campaign, ft_count, ft_start,
                    opp_ints[i, _INT_USER_KEY_HASH], c, now_whole_s,
                    check_record[c, _CHECK_FREQUENCY_WINDOW]) >= cap:
                n_frequency += 1
                continue
            bid = _ecpm_micros(c, price_record, viewability, ctr, shade_mul, shade_add)
            if bid < floor:
                n_floor += 1
                continue
            n_eligible += 1
            # Ranked by (bid descending, campaign ascending) against the fast winners.
            if bid > best_bid or (bid == best_bid and c < best):
                second = best
                second_bid = best_bid
                best = c
                best_bid = bid
            elif bid > second_bid or (bid == second_bid and c < second):
                second = c
                second_bid = bid
        n_eligible += n_fast_eligible
        n_floor += n_fast - n_fast_eligible
        results[RESULT_CAMPAIGN, i] = best
        results[RESULT_BID, i] = best_bid if best >= 0 else 0
        results[RESULT_SECOND, i] = second
        results[RESULT_SECOND_BID, i] = second_bid if second >= 0 else 0
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
        results[RESULT_REASON, i] = reason
        reason_counts[REASON_NONE] += n_eligible
        reason_counts[REASON_TARGETING] += n_campaigns - candidates
        reason_counts[REASON_BUDGET] += n_budget
        reason_counts[REASON_PACING] += n_pacing
        reason_counts[REASON_FREQUENCY] += n_frequency
        reason_counts[REASON_FLOOR] += n_floor


@kernel()
def evaluate_batch(table_words, postings, price_record, check_record, spend_micros,
                   daily_spend_micros, flag_bits, ft_slots, ft_entries, opp_rows, opp_ints,
                   opp_floats, now_s, day_start_s, results, reason_counts):
    """Serial evaluate over the whole batch; arguments as _evaluate_range without lo, hi
    (named, not *args: a star-args call costs a quarter more to dispatch)."""
    _evaluate_range(0, results.shape[1], table_words, postings, price_record, check_record,
                    spend_micros, daily_spend_micros, flag_bits, ft_slots, ft_entries,
                    opp_rows, opp_ints, opp_floats, now_s, day_start_s, results,
                    reason_counts)


@kernel(parallel=True)
def evaluate_batch_parallel(chunks, table_words, postings, price_record, check_record,
                            spend_micros, daily_spend_micros, flag_bits, ft_slots, ft_entries,
                            opp_rows, opp_ints, opp_floats, now_s, day_start_s, results,
                            reason_counts):
    """Parallel evaluate: opportunities split into `chunks` (a few per Numba thread; the
    caller picks, as reading the thread count here would stop caching); each chunk counts
    reasons in its own row, summed at the end (no shared writes). Arguments after chunks
    as evaluate_batch."""
    n = results.shape[1]
    n_chunks = min(n, chunks)
    if n_chunks <= 0:
        return
    per_chunk = np.zeros((n_chunks, len(reason_counts)), np.int64)
    for k in numba.prange(n_chunks):
        lo = k * n // n_chunks
        hi = (k + 1) * n // n_chunks
        _evaluate_range(lo, hi, table_words, postings, price_record, check_record,
                        spend_micros, daily_spend_micros, flag_bits, ft_slots, ft_entries,
                        opp_rows, opp_ints, opp_floats, now_s, day_start_s, results,
                        per_chunk[k])
    for k in range(n_chunks):
        for r in range(len(reason_counts)):
            reason_counts[r] += per_chunk[k, r]


def evaluate_args(table, state, frequency_table, batch, now_s: float, day_start_s: float,
                  outputs) -> tuple:
    """The kernel's argument tuple: plain arrays and scalars, in _evaluate_range order."""
    return (table.kernel.words, table.kernel.postings, table.price_record,
            table.check_record, state.spend_micros, state.daily_spend_micros,
            state.flag_bits, frequency_table.slots, frequency_table.entries, batch.rows,
            batch.ints, batch.floats,
            float(now_s), float(day_start_s)) + tuple(outputs)


def new_outputs(n: int) -> tuple:
    """(results, reason_counts): results int64 [RESULT_* rows, n] holds campaign, bid,
    second, second bid and reason per opportunity; one output array rather than five,
    as every array argument adds to each call's cost."""
    return np.empty((N_RESULTS, n), np.int64), np.zeros(N_REASONS, np.int64)


def parallel_chunks() -> int:
    """Chunks per parallel call: several per thread so uneven opportunities balance."""
    return numba.get_num_threads() * 8
