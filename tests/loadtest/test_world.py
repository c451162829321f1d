"""The world of one run: exact proportions from decks, pods with OpenRTB 2.6
fields, bots with the agents and addresses that give them away."""

from __future__ import annotations

import ipaddress
import random
from collections import Counter

from loadtest import scenario, world
from loadtest.behaviour import ad_request

DATACENTER = [ipaddress.ip_network(n) for n in
              ("3.0.0.0/9", "34.64.0.0/10", "35.184.0.0/13", "52.0.0.0/11", "54.64.0.0/11", "104.131.0.0/16")]
DOCUMENTATION = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]


def test_a_deck_holds_each_share_exactly():
    cards = world.deck(52_000, {"tight": 150 / 5200}, random.Random(3), "normal")
    assert Counter(cards) == {"tight": 1500, "normal": 50_500}


def test_seed_example_deals_its_shares_exactly_at_scale_0_01():
    plan = world.plan(scenario.load("seed-example"), 0.01, seed=1)
    assert len(plan) == 52_000
    assert sum(op.tight_deadline for op in plan) == 1500
    assert sum(op.fate != "render" for op in plan) == 1339  # 0.0257426 of every opportunity
    assert len({op.request_id for op in plan}) == len(plan)


def test_the_same_seed_plans_the_same_world():
    world_a = world.plan(scenario.load("slow-dsp"), 0.001, seed=4)
    world_b = world.plan(scenario.load("slow-dsp"), 0.001, seed=4)
    assert world_a == world_b


def test_ctv_slots_carry_pod_fields_and_device_type_3():
    plan = world.plan(scenario.load("ctv-ad-breaks"), 0.0002, seed=1)
    pods = [op for op in plan if op.pod is not None]
    assert len(pods) == len(plan)
    first = ad_request(pods[0])
    video = first.imp.video
    assert video.podid and video.maxseq >= 2 and video.poddur >= 30
    assert video.podseq == 1 and video.slotinpod == 1  # the pre-roll's first slot
    assert first.device.devicetype == 3 and first.HasField("app")
    assert {op.pod.break_name for op in pods} >= {"pre", "mid", "post"}


def test_bots_use_bot_agents_and_data_center_ips_humans_documentation_ips():
    plan = world.plan(scenario.load("bot-storm"), 0.001, seed=2)
    kinds = Counter(op.user.kind for op in plan)
    assert kinds["human"] == 600 and kinds["bot_known_agent"] == 160
    for op in plan:
        ip = ipaddress.ip_address(op.user.ip)
        if op.user.kind == "bot_datacenter":
            assert any(ip in n for n in DATACENTER), op.user.ip
        else:
            assert any(ip in n for n in DOCUMENTATION), op.user.ip
        if op.user.kind == "bot_known_agent":
            agent = op.user.user_agent.lower()
            assert any(s in agent for s in ("bot", "crawler", "spider", "headlesschrome", "python-requests", "curl/"))
