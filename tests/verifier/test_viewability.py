"""The IAB/MRC viewable impression rule."""

from __future__ import annotations

import pytest

from adchain.v1 import verifier_pb2
from services.runtime.errors import InvalidArgument
from services.verifier.viewability import longest_in_view_ms, required_ms, threshold_percent, validate_samples


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
