"""The load test against a running chain (in-process servers on ephemeral
ports), as `--addresses` runs it: counts come from the services, and they
agree with what the clients did."""

from __future__ import annotations

import dataclasses
import io
import json

from loadtest import report, scenario
from loadtest.run import run


def test_against_a_running_chain_the_services_agree_with_the_ground_truth(chain):
    world = scenario.load("seed-example")
    # The test chain's DSPs buy 300x250 banners and video; keep to what they buy.
    placements = (dataclasses.replace(world.traffic.placements[0], sizes=((300, 250),), share=1.0),)
    world = dataclasses.replace(world, traffic=dataclasses.replace(world.traffic, placements=placements,
                                                                   concurrency=8))
    progress = io.StringIO()
    result = run(world, scale=0.001, seed=3, addresses=chain.addresses(), max_opportunities=300, progress=progress)
    assert set(result) >= {"stages", "billing", "causes", "latency_ms", "throughput"}
    stages = {row["stage"]: row for row in result["stages"]}
    assert stages["won"]["count"] > 0 and stages["viewable"]["count"] > 0
    assert result["truth_agrees"], report.table(result)
    assert any("cannot be applied" in note for note in result["notes"])
    assert "300/300 opportunities" in progress.getvalue()
    json.loads(report.to_json(result))
    html = report.to_html(result)
    assert "<svg" in html and "http" not in html.split("<body>", 1)[1].replace("https://", "")


def test_bulk_mode_plays_the_same_world_through_the_batch_rpcs_and_agrees_with_the_truth(chain):
    world = scenario.load("seed-example")
    placements = (dataclasses.replace(world.traffic.placements[0], sizes=((300, 250),), share=1.0),)
    world = dataclasses.replace(world, traffic=dataclasses.replace(world.traffic, placements=placements))
    result = run(world, scale=0.001, seed=3, addresses=chain.addresses(), max_opportunities=600, progress=None,
                 bulk=True)
    assert result["throughput"]["mode"] == "bulk"
    stages = {row["stage"]: row for row in result["stages"]}
    assert stages["won"]["count"] > 0 and stages["viewable"]["count"] > 0
    assert result["client"]["duplicate_beacons"] > 0
    assert result["truth_agrees"], report.table(result)
