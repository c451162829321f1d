"""The IAB/MRC viewable impression rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adchain.v1 import verifier_pb2
from services.runtime.errors import InvalidArgument
from services.verifier.viewability import (SampleArrays, _decode_samples, _read_samples, longest_in_view_ms,
                                           required_ms, threshold_percent, validate_samples)


def samples(*pairs):
    return [verifier_pb2.InViewSample(offset_ms=t, in_view_percent=p) for t, p in pairs]


def test_display_needs_half_the_pixels_for_one_second():
    assert (threshold_percent(1, 300, 250), required_ms(1)) == (50, 1000)


def test_video_needs_half_the_pixels_for_two_seconds():
    assert (threshold_percent(2, 1280, 720), required_ms(2)) == (50, 2000)


def test_large_display_ads_need_thirty_percent():
    assert threshold_percent(1, 970, 250) == 30  # exactly 242,500 pixels
    assert threshold_percent(1, 970, 249) == 50


def test_the_run_must_be_continuous():
    broken = samples((0, 60), (600, 60), (700, 10), (800, 60), (1500, 60), (1600, 0))
    assert longest_in_view_ms(broken, 50) == 800


def test_a_run_ends_at_the_sample_that_saw_the_ad_leave():
    assert longest_in_view_ms(samples((0, 50), (500, 70), (1000, 40)), 50) == 1000


def test_time_after_the_last_sample_is_not_credited():
    assert longest_in_view_ms(samples((0, 100), (900, 100)), 50) == 900


def test_samples_below_threshold_never_count():
    assert longest_in_view_ms(samples((0, 49), (5000, 49)), 50) == 0


@pytest.mark.parametrize("bad, field", [
    (samples((0, 101)), "samples[0].in_view_percent"),
    (samples((0, 50), (-1, 50)), "samples[1].offset_ms"),
    (samples((500, 50), (100, 50)), "samples[1].offset_ms"),
])
def test_bad_samples_name_the_sample(bad, field):
    with pytest.raises(InvalidArgument) as raised:
        validate_samples(bad)
    assert raised.value.field == field


def in_order(pairs: list[tuple[int, int]]) -> list[verifier_pb2.InViewSample]:
    """Samples at increasing offsets (gaps of 0 to 400 ms), as a tag takes them."""
    offset, out = 0, []
    for gap, percent in pairs:
        offset += gap
        out.append(verifier_pb2.InViewSample(offset_ms=offset, in_view_percent=percent))
    return out


valid_reports = st.lists(st.tuples(
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 100)), max_size=25).map(in_order),
    st.sampled_from((30, 50))), max_size=12)


@settings(max_examples=300, deadline=None)
@given(valid_reports)
def test_the_vectorised_rule_equals_the_reference_rule(reports):
    requests = [verifier_pb2.RecordExposureRequest(samples=s) for s, _threshold in reports]
    thresholds = np.array([t for _s, t in reports], dtype=np.int64)
    assert SampleArrays(requests).longest_in_view_ms(thresholds).tolist() == \
        [longest_in_view_ms(s, t) for s, t in reports]


def refused(samples) -> bool:
    try:
        validate_samples(samples)
    except InvalidArgument:
        return True
    return False


any_samples = st.lists(st.tuples(st.integers(-5, 2_000), st.integers(-5, 105)).map(
    lambda pair: verifier_pb2.InViewSample(offset_ms=pair[0], in_view_percent=pair[1])), max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(any_samples, max_size=10))
def test_the_vectorised_check_flags_exactly_the_reports_the_reference_refuses(reports):
    requests = [verifier_pb2.RecordExposureRequest(samples=s) for s in reports]
    assert SampleArrays(requests).invalid_reports().tolist() == [i for i, s in enumerate(reports) if refused(s)]


wire_reports = st.lists(st.builds(
    verifier_pb2.RecordExposureRequest,
    token=st.text(max_size=40),
    method=st.integers(0, 4),
    samples=st.lists(st.builds(verifier_pb2.InViewSample, offset_ms=st.integers(-2**63, 2**63 - 1),
                               in_view_percent=st.integers(-2**31, 2**31 - 1)), max_size=6)), max_size=8)


@settings(max_examples=300, deadline=None)
@given(wire_reports)
def test_samples_decoded_from_the_wire_equal_those_read_through_the_messages(reports):
    wire = [report.SerializeToString() for report in reports]
    decoded = _decode_samples(np.frombuffer(b"".join(wire), dtype=np.uint8),
                              np.cumsum([len(w) for w in wire], dtype=np.int64))
    assert decoded is not None
    assert [a.tolist() for a in decoded] == [a.tolist() for a in _read_samples(reports)]


def test_fields_a_newer_tag_sends_are_skipped_and_groups_read_through_the_messages():
    # Unknown fields 9 (a varint) and 10 (fixed32) in the report, 7 (fixed64) in the sample.
    wire = bytes([0x48, 0x96, 0x01, 0x55, 1, 2, 3, 4, 0x1A, 0x0D, 0x39, 1, 2, 3, 4, 5, 6, 7, 8, 0x08, 0x05, 0x10, 0x3C])
    assert [(s.offset_ms, s.in_view_percent) for s in verifier_pb2.RecordExposureRequest.FromString(wire).samples] \
        == [(5, 60)]
    counts, offsets_ms, percents = _decode_samples(np.frombuffer(wire, dtype=np.uint8), np.array([len(wire)]))
    assert (counts.tolist(), offsets_ms.tolist(), percents.tolist()) == ([1], [5], [60])
    group = bytes([0x5B, 0x5C]) + wire  # field 11 as an (empty) group
    assert _decode_samples(np.frombuffer(group, dtype=np.uint8), np.array([len(group)])) is None
    assert SampleArrays([verifier_pb2.RecordExposureRequest.FromString(group)]).offsets_ms.tolist() == [5]
