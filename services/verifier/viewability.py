"""The IAB/MRC viewable impression rule over a tag's in-view samples.

Display: at least 50% of the ad's pixels in view for 1 continuous second.
Video: 50% for 2 continuous seconds. Large display ads (242,500 pixels or
more) need only 30% of pixels in view (MRC viewable ad impression
guidelines). Samples are taken every 100-200 ms; the ad is held to be in
the state of its latest sample until the next one, and a run still open at
the last sample ends there: time the tag did not observe is never credited.

`longest_in_view_ms` states the rule for one report in plain Python (the
reference); `SampleArrays` applies it to a whole batch of reports in one
vectorised pass, and a property test holds the two equal. A batch's samples
are read straight from the reports' wire form by a small Numba kernel
(`_decode_samples`; its plain twin `_read_samples` reads them through the
messages, and a property test holds those equal too).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numba
import numpy as np

from adchain.v1 import verifier_pb2
from services.runtime.errors import InvalidArgument

LARGE_AD_PIXELS = 242_500
MTYPE_VIDEO = 2

# cache=True: the kernels load from Numba's on-disk cache at start-up instead of
# compiling; nogil=True: gRPC worker threads decode batches concurrently.
_kernel = numba.njit(cache=True, nogil=True)


# The in-view percents threshold_percent answers with.
THRESHOLDS_PERCENT = (30, 50)


def threshold_percent(mtype: int, w: int, h: int) -> int:
    if mtype != MTYPE_VIDEO and w * h >= LARGE_AD_PIXELS:
        return 30
    return 50


def required_ms(mtype: int) -> int:
    return 2000 if mtype == MTYPE_VIDEO else 1000


def longest_in_view_ms(samples: Sequence[verifier_pb2.InViewSample], threshold: int) -> int:
    """Longest continuous time the samples show at least `threshold` percent in view."""
    longest, run_start = 0, None
    for sample in samples:
        offset_ms = sample.offset_ms
        if sample.in_view_percent >= threshold:
            if run_start is None:
                run_start = offset_ms
            longest = max(longest, offset_ms - run_start)
        else:
            if run_start is not None:
                # The run lasted until this sample showed the ad out of view.
                longest = max(longest, offset_ms - run_start)
            run_start = None
    return longest


def validate_samples(samples: Sequence[verifier_pb2.InViewSample]) -> None:
    previous = -1
    for i, sample in enumerate(samples):
        percent, offset_ms = sample.in_view_percent, sample.offset_ms
        if not 0 <= percent <= 100:
            raise InvalidArgument(f"samples[{i}].in_view_percent", f"must be 0 to 100, got {percent}")
        if offset_ms < 0:
            raise InvalidArgument(f"samples[{i}].offset_ms", "must not be negative")
        if offset_ms < previous:
            raise InvalidArgument(f"samples[{i}].offset_ms", "samples must be in time order")
        previous = offset_ms


class SampleArrays:
    """The in-view samples of a batch of reports, decoded once: every report's
    samples back to back, report i's at [starts[i], starts[i + 1])."""

    def __init__(self, reports: Sequence[verifier_pb2.RecordExposureRequest]):
        # Read from each report's wire form in one kernel pass: reading the
        # samples through the message API builds a Python object per sample.
        wire = [report.SerializeToString() for report in reports]
        ends = np.cumsum(np.fromiter(map(len, wire), dtype=np.int64, count=len(wire)))
        decoded = _decode_samples(np.frombuffer(b"".join(wire), dtype=np.uint8), ends)
        if decoded is None:  # not a wire form this kernel reads: read it through the messages
            decoded = _read_samples(reports)
        counts, self.offsets_ms, self.in_view_percents = decoded
        self.starts = np.zeros(len(reports) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.starts[1:])
        # The report each sample belongs to, and whether it is its report's first.
        self.owners = np.repeat(np.arange(len(reports), dtype=np.int64), counts)
        self.firsts = np.zeros(len(self.offsets_ms), dtype=bool)
        self.firsts[self.starts[:-1][counts > 0]] = True

    def invalid_reports(self) -> np.ndarray:
        """The reports with a sample validate_samples refuses (out of range,
        negative or out of time order), ascending."""
        offsets = self.offsets_ms
        bad = (self.in_view_percents < 0) | (self.in_view_percents > 100) | (offsets < 0)
        bad[1:] |= (offsets[1:] < offsets[:-1]) & ~self.firsts[1:]
        return np.unique(self.owners[bad])

    def longest_in_view_ms(self, thresholds: np.ndarray) -> np.ndarray:
        """longest_in_view_ms for every report at once, report i held to
        thresholds[i] percent; for reports whose samples are valid."""
        n_reports = len(self.starts) - 1
        longest = np.zeros(n_reports, dtype=np.int64)
        if len(self.offsets_ms) == 0:
            return longest
        offsets = self.offsets_ms
        in_view = self.in_view_percents >= thresholds[self.owners]
        # Was the previous sample of the same report in view?
        before = np.zeros_like(in_view)
        before[1:] = in_view[:-1]
        before &= ~self.firsts
        # Each in-view sample's run began at the latest run start at or before it.
        index = np.arange(len(offsets))
        began = np.maximum.accumulate(np.where(in_view & ~before, index, 0))
        runs = np.zeros(len(offsets), dtype=np.int64)
        runs[in_view] = (offsets - offsets[began])[in_view]
        # A run also lasts until the sample that saw the ad leave the view.
        left = ~in_view & before
        runs[left] = offsets[left] - offsets[began[np.flatnonzero(left) - 1]]
        measured = self.starts[:-1] < self.starts[1:]
        longest[measured] = np.maximum.reduceat(runs, self.starts[:-1][measured])
        return longest


_OFFSET_MS = operator.attrgetter("offset_ms")
_IN_VIEW_PERCENT = operator.attrgetter("in_view_percent")


def _read_samples(reports: Sequence[verifier_pb2.RecordExposureRequest]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(samples per report, offsets, percents) through the message API: the
    plain twin of `_decode_samples`."""
    samples = [sample for report in reports for sample in report.samples]
    counts = np.array([len(report.samples) for report in reports], dtype=np.int64)
    offsets_ms = np.fromiter(map(_OFFSET_MS, samples), dtype=np.int64, count=len(samples))
    in_view_percents = np.fromiter(map(_IN_VIEW_PERCENT, samples), dtype=np.int64, count=len(samples))
    return counts, offsets_ms, in_view_percents


def _decode_samples(wire: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(samples per report, offsets, percents) from serialized
    RecordExposureRequests laid end to end, report i ending at ends[i]; None
    when the bytes hold something the kernel does not read (a group)."""
    counts = np.zeros(len(ends), dtype=np.int64)
    # A sample takes at least two bytes (its tag and length).
    offsets_ms = np.empty(len(wire) // 2 + 1, dtype=np.int64)
    in_view_percents = np.empty(len(wire) // 2 + 1, dtype=np.int64)
    n = _decode_samples_kernel(wire, ends, counts, offsets_ms, in_view_percents)
    if n < 0:
        return None
    return counts, offsets_ms[:n], in_view_percents[:n]


# Protocol buffers wire format (protobuf.dev/programming-guides/encoding):
# each field is a varint key (field number << 3 | wire type) and its value.
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_SAMPLES_FIELD = 3  # RecordExposureRequest.samples
_OFFSET_MS_FIELD, _IN_VIEW_PERCENT_FIELD = 1, 2  # InViewSample


@_kernel
def _varint(wire, pos):
    """The varint at `pos` and the position after it (-1 past the end of `wire`)."""
    value = np.uint64(0)
    shift = np.uint64(0)
    while pos < len(wire) and shift < np.uint64(64):
        byte = np.uint64(wire[pos])
        pos += 1
        value |= (byte & np.uint64(0x7F)) << shift
        if byte < np.uint64(0x80):
            return value, pos
        shift += np.uint64(7)
    return value, -1


@_kernel
def _skip(wire, pos, wire_type):
    """The position after a field's value, or -1 for a wire type not read here."""
    if wire_type == _VARINT:
        _value, pos = _varint(wire, pos)
        return pos
    if wire_type == _FIXED64:
        return pos + 8
    if wire_type == _LENGTH_DELIMITED:
        length, pos = _varint(wire, pos)
        return -1 if pos < 0 else pos + np.int64(length)
    if wire_type == _FIXED32:
        return pos + 4
    return -1


@_kernel
def _decode_samples_kernel(wire, ends, counts, offsets_ms, in_view_percents):
    """Fills the arrays and returns how many samples there were, or -1 for
    bytes it does not read. Every position is checked against the report's
    end, so no read leaves the buffer."""
    n = 0
    pos = 0
    for report in range(len(ends)):
        end = ends[report]
        while pos < end:
            key, pos = _varint(wire, pos)
            if pos < 0:
                return -1
            field, wire_type = np.int64(key >> np.uint64(3)), np.int64(key & np.uint64(7))
            if field != _SAMPLES_FIELD or wire_type != _LENGTH_DELIMITED:
                pos = _skip(wire, pos, wire_type)
                if pos < 0 or pos > end:
                    return -1
                continue
            length, pos = _varint(wire, pos)
            sample_end = pos + np.int64(length)
            if pos < 0 or sample_end > end:
                return -1
            # Absent fields are zero (proto3); a field seen twice takes its last value.
            offset_ms, percent = np.int64(0), np.int64(0)
            while pos < sample_end:
                key, pos = _varint(wire, pos)
                if pos < 0:
                    return -1
                field, wire_type = np.int64(key >> np.uint64(3)), np.int64(key & np.uint64(7))
                if wire_type == _VARINT and field == _OFFSET_MS_FIELD:
                    value, pos = _varint(wire, pos)
                    offset_ms = np.int64(value)
                elif wire_type == _VARINT and field == _IN_VIEW_PERCENT_FIELD:
                    value, pos = _varint(wire, pos)
                    # int32: the low 32 bits, two's complement.
                    low = np.int64(value & np.uint64(0xFFFFFFFF))
                    percent = low - np.int64(1 << 32) if low >= np.int64(1 << 31) else low
                else:
                    pos = _skip(wire, pos, wire_type)
                if pos < 0 or pos > sample_end:
                    return -1
            offsets_ms[n] = offset_ms
            in_view_percents[n] = percent
            counts[report] += 1
            n += 1
    return n


def warm() -> None:
    """Compile (or load from Numba's cache) the decoder now, not on a first request."""
    SampleArrays([verifier_pb2.RecordExposureRequest(samples=[verifier_pb2.InViewSample(offset_ms=1,
                                                                                         in_view_percent=-1)])])
