"""Frequency capping: impressions per (user key hash, campaign) per window, in an
open-addressing hash table held in one array of four rows (linear probing, power-of-two
capacity, load kept <= 1/2). evaluate reads it; billed impressions in accrue write it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._jit import kernel

EMPTY = -1  # campaign slot value of an unused entry


# Rows of FrequencyTable.slots.
SLOT_USER, SLOT_CAMPAIGN, SLOT_COUNT, SLOT_WINDOW_START = range(4)


@dataclass(frozen=True)
class FrequencyTable:
    """slots: int64 [4, capacity], SLOT_* rows: user key hash, campaign (EMPTY = free
    slot), impressions in the window, window start (the window opens at the first
    impression). One array so evaluate takes the table as two arguments (slots, entries);
    the kernels here take the rows as views (arrays())."""
    slots: np.ndarray
    entries: np.ndarray         # int64 [1]: used slots, so evaluate skips an empty table

    @classmethod
    def empty(cls, capacity: int = 1024) -> "FrequencyTable":
        capacity = 1 << max(4, (int(capacity) - 1).bit_length())
        slots = np.zeros((4, capacity), np.int64)
        slots[SLOT_CAMPAIGN] = EMPTY
        return cls(slots, np.zeros(1, np.int64))

    @property
    def campaign(self) -> np.ndarray:
        return self.slots[SLOT_CAMPAIGN]

    @property
    def capacity(self) -> int:
        return self.slots.shape[1]

    def used(self) -> int:
        return int(np.count_nonzero(self.campaign != EMPTY))

    def arrays(self) -> tuple:
        """(user hash, campaign, count, window start, entries): the kernels' arguments."""
        return (*self.slots, self.entries)


@kernel()
def _slot_hash(user_hash, campaign):
    # evaluate._frequency_slot_hash is the same mix (each cached kernel keeps its helpers).
    h = np.uint64(user_hash) * np.uint64(0x9E3779B97F4A7C15)
    h ^= np.uint64(campaign) * np.uint64(0xC2B2AE3D27D4EB4F)
    h ^= h >> np.uint64(31)
    return h


@kernel()
def _find_slot(keys_user, keys_campaign, user_key, campaign_id):
    """Slot holding (user_key, campaign_id), or the free slot where it would go; -1 when
    the table is full."""
    mask = np.uint64(len(keys_campaign) - 1)
    slot = np.int64(_slot_hash(user_key, campaign_id) & mask)
    for _ in range(len(keys_campaign)):
        c = keys_campaign[slot]
        if c == EMPTY or (c == campaign_id and keys_user[slot] == user_key):
            return slot
        slot = np.int64(np.uint64(slot + 1) & mask)
    return -1


@kernel()
def frequency_count(user_hash, campaign, count, window_start_s, entries, user_key, campaign_id,
                    now_s, window_s):
    """Impressions in the current window; 0 when absent or the window has expired."""
    slot = _find_slot(user_hash, campaign, user_key, campaign_id)
    if slot < 0 or campaign[slot] == EMPTY or now_s - window_start_s[slot] >= window_s:
        return 0
    return count[slot]


@kernel()
def frequency_check(user_hash, campaign, count, window_start_s, entries, users, campaigns,
                    caps, windows_s, now_s, out_allowed):
    """Cap check for a batch of (user, campaign): allowed while count < cap (cap 0 = none)."""
    for k in range(len(users)):
        cap = caps[k]
        out_allowed[k] = cap <= 0 or frequency_count(
            user_hash, campaign, count, window_start_s, entries, users[k], campaigns[k], now_s,
            windows_s[k]) < cap


@kernel()
def frequency_record(user_hash, campaign, count, window_start_s, entries, users, campaigns,
                     windows_s, now_s):
    """Count one impression per (users[k], campaigns[k]). A window opens at the first
    impression and lasts windows_s[k]; an expired window restarts at 1. Returns the number
    of new slots taken, or -1 if the table filled (the caller grows it first, so it
    does not)."""
    added = 0
    for k in range(len(users)):
        slot = _find_slot(user_hash, campaign, users[k], campaigns[k])
        if slot < 0:
            return -1
        if campaign[slot] == EMPTY:
            user_hash[slot] = users[k]
            campaign[slot] = campaigns[k]
            count[slot] = 1
            window_start_s[slot] = now_s
            entries[0] += 1
            added += 1
        elif now_s - window_start_s[slot] >= windows_s[k]:
            count[slot] = 1
            window_start_s[slot] = now_s
        else:
            count[slot] += 1
    return added


@kernel()
def frequency_rehash(user_hash, campaign, count, window_start_s, entries, remap,
                     new_user_hash, new_campaign, new_count, new_window_start_s, new_entries):
    """Copy live entries into a new (larger or fresh) table, renumbering campaigns through
    `remap` (old index -> new index, -1 = campaign gone, entry dropped)."""
    for slot in range(len(campaign)):
        c = campaign[slot]
        if c == EMPTY:
            continue
        nc = remap[c]
        if nc < 0:
            continue
        dst = _find_slot(new_user_hash, new_campaign, user_hash[slot], nc)
        new_user_hash[dst] = user_hash[slot]
        new_campaign[dst] = nc
        new_count[dst] = count[slot]
        new_window_start_s[dst] = window_start_s[slot]
        new_entries[0] += 1


def grown(table: FrequencyTable, extra: int, remap: np.ndarray | None = None,
          n_campaigns: int = 0) -> FrequencyTable:
    """A table with room for `extra` more entries at load <= 1/2 (the same object when it
    already has room and no remap is asked for)."""
    used = table.used()
    if remap is None and 2 * (used + extra) <= table.capacity:
        return table
    if remap is None:
        remap = np.arange(max(n_campaigns, int(table.campaign.max(initial=-1)) + 1),
                          dtype=np.int32)
    new = FrequencyTable.empty(max(table.capacity, 2 * (used + extra)))
    frequency_rehash(*table.arrays(), remap.astype(np.int32), *new.arrays())
    return new
