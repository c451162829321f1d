"""The DSP's simulated latency: a fixed delay plus a seeded exponential tail,
so a load test can make one buyer miss tmax some of the time."""

from __future__ import annotations

import random

from services.dsp.settings import DspSettings


def test_a_fixed_delay_without_jitter():
    assert DspSettings(response_delay_ms=4).draw_response_delay_ms(random.Random(1)) == 4


def test_jitter_adds_an_exponential_tail_with_the_configured_mean():
    settings = DspSettings(response_delay_ms=20, response_jitter_ms=10)
    rng = random.Random(1)
    delays = [settings.draw_response_delay_ms(rng) for _ in range(20_000)]
    assert min(delays) >= 20
    assert 9.5 < sum(d - 20 for d in delays) / len(delays) < 10.5


def test_the_same_seed_draws_the_same_delays():
    settings = DspSettings(response_delay_ms=5, response_jitter_ms=30)
    first, second = random.Random(7), random.Random(7)
    assert [settings.draw_response_delay_ms(first) for _ in range(5)] == [
        settings.draw_response_delay_ms(second) for _ in range(5)]


def test_negative_jitter_is_rejected():
    assert any("response_jitter_ms" in p for p in DspSettings(response_jitter_ms=-1).validate("dsp"))


def test_default_predictions_must_be_probabilities():
    problems = DspSettings(default_viewability=1.2, default_ctr=-0.1).validate("dsp")
    assert any("default_viewability" in p for p in problems)
    assert any("default_ctr" in p for p in problems)
