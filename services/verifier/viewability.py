"""The IAB/MRC viewable impression rule over a tag's in-view samples.

Display: at least 50% of the ad's pixels in view for 1 continuous second.
Video: 50% for 2 continuous seconds. Large display ads (242,500 pixels or
more) need only 30% of pixels in view (MRC viewable ad impression
guidelines). Samples are taken every 100-200 ms; the ad is held to be in
the state of its latest sample until the next one, and a run still open at
the last sample ends there: time the tag did not observe is never credited.
"""

from __future__ import annotations

from collections.abc import Sequence

from adchain.v1 import verifier_pb2
from services.runtime.errors import InvalidArgument

LARGE_AD_PIXELS = 242_500
MTYPE_VIDEO = 2


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
        if sample.in_view_percent >= threshold:
            if run_start is None:
                run_start = sample.offset_ms
            longest = max(longest, sample.offset_ms - run_start)
        else:
            if run_start is not None:
                # The run lasted until this sample showed the ad out of view.
                longest = max(longest, sample.offset_ms - run_start)
            run_start = None
    return longest


def validate_samples(samples: Sequence[verifier_pb2.InViewSample]) -> None:
    previous = -1
    for i, sample in enumerate(samples):
        if not 0 <= sample.in_view_percent <= 100:
            raise InvalidArgument(f"samples[{i}].in_view_percent", f"must be 0 to 100, got {sample.in_view_percent}")
        if sample.offset_ms < 0:
            raise InvalidArgument(f"samples[{i}].offset_ms", "must not be negative")
        if sample.offset_ms < previous:
            raise InvalidArgument(f"samples[{i}].offset_ms", "samples must be in time order")
        previous = sample.offset_ms
