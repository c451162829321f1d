"""Scenario files: shipped ones load by name, and every problem in a bad one
is reported together."""

from __future__ import annotations

import tomllib

import pytest

from loadtest import scenario

MINIMAL = {
    "scenario": {"name": "tiny"},
    "traffic": {"opportunities": 10, "placements": [{"name": "p", "share": 1.0, "domains": ["a.example"]}]},
}


@pytest.mark.parametrize("name", ["seed-example", "ctv-ad-breaks", "bot-storm", "slow-dsp"])
def test_each_shipped_scenario_loads_by_name(name):
    assert scenario.load(name).name == name


def test_a_scenario_is_found_by_path_too(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(scenario.find("slow-dsp").read_text())
    assert scenario.load(str(path)).name == "slow-dsp"


def test_an_unknown_name_lists_the_shipped_scenarios():
    with pytest.raises(FileNotFoundError, match="seed-example"):
        scenario.find("no-such-world")


def test_a_minimal_scenario_takes_defaults():
    world = scenario.parse(MINIMAL)
    assert world.traffic.placements[0].format == "banner"
    assert world.traffic.placements[0].sizes == ((300, 250),)
    assert world.network.tight_deadline_share == 0


def test_every_problem_is_reported_together():
    data = {
        "scenario": {},
        "traffic": {"opportunities": 0, "auction_type": 3, "placements": [
            {"name": "p", "share": 0.5, "domains": [], "format": "audio", "sizes": ["big"]}]},
        "users": {"bots": {"share": 0.2, "known_agent": 0.5}},
        "behaviour": {"abandon_share": 1.5, "render_delay_ms": [400, 50], "typo_share": 0.1},
        "expect": [{"metric": "viewable/nothing", "value": 1}],
    }
    with pytest.raises(scenario.ScenarioError) as error:
        scenario.parse(data)
    text = "\n".join(error.value.problems)
    for fragment in ("scenario.name", "traffic.opportunities", "traffic.auction_type", "shares must add up to 1",
                     "domains", "format", "'big'", "known_agent + datacenter + human_like", "abandon_share",
                     "render_delay_ms", "typo_share: unknown setting", "viewable/nothing"):
        assert fragment in text, fragment


def test_pods_must_be_video():
    data = tomllib.loads("""
[scenario]
name = "x"
[traffic]
opportunities = 5
[[traffic.placements]]
name = "p"
kind = "ctv"
share = 1.0
domains = ["tv.example"]
[traffic.placements.pod]
slots = 2
""")
    with pytest.raises(scenario.ScenarioError, match="ad pods are video"):
        scenario.parse(data)
