"""What a client sends: the same request and the same tag report for an
opportunity whether it goes alone or as an item of a batch, and whenever the
shared random source is asked for it."""

from __future__ import annotations

import random

from adchain.v1 import exchange_pb2, verifier_pb2
from loadtest import scenario, world
from loadtest.behaviour import ad_request, exposure, render_delay_ms

INTERVAL_MS = (100, 200)


def test_a_batch_item_is_the_request_the_client_sends_alone():
    plan = world.plan(scenario.load("ctv-ad-breaks"), 0.0005, seed=2) + world.plan(
        scenario.load("seed-example"), 0.0005, seed=2)
    batch = exchange_pb2.RequestAdsRequest()
    for op in plan:
        alone = ad_request(op, auction_type=1, tmax_ms=150)
        assert ad_request(op, 1, 150, batch.items.add()) == alone
        assert alone.request_id == f"lt-2-{op.index}"
        assert alone.HasField("site") != alone.HasField("app")
        assert alone.imp.HasField("video") != alone.imp.HasField("banner")


def test_a_tag_report_depends_only_on_the_opportunity():
    plan = [op for op in world.plan(scenario.load("seed-example"), 0.001, seed=5) if op.measurable]
    shared, batch = random.Random(), verifier_pb2.RecordExposuresRequest()
    for op in plan[:200]:
        ad = exchange_pb2.Ad(token=f"t{op.index}", mtype=1)
        first = exposure(op, ad, shared, INTERVAL_MS)
        shared.random()  # whatever the shared source drew in between
        assert exposure(op, ad, shared, INTERVAL_MS, batch.items.add()) == first
        assert exposure(op, ad, random.Random(), INTERVAL_MS) == first
        offsets = [s.offset_ms for s in first.samples]
        assert offsets[0] == 0 and all(100 <= b - a <= 200 for a, b in zip(offsets, offsets[1:]))
        assert first.samples[-1].in_view_percent == 0  # the ad left the viewport


def test_a_bots_render_delay_is_its_own_whatever_came_before():
    bots = [op for op in world.plan(scenario.load("bot-storm"), 0.001, seed=2) if op.user.kind != "human"]
    shared, ad = random.Random(), exchange_pb2.Ad()
    delays = [render_delay_ms(op, ad, shared) for op in bots]
    shared.random()
    assert [render_delay_ms(op, ad, random.Random()) for op in reversed(bots)] == delays[::-1]
    assert all(2.0 <= d <= 60.0 for d in delays)
