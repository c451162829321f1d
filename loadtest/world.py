"""The world a scenario describes, made concrete for one run: a population of
users (humans and bots, each with an id, a user agent and an IP) and, for
every opportunity, where it shows, who sees it and what that client will do.

Behaviours are dealt from shuffled decks that hold each share exactly (the
largest-remainder count of every kind), so the world's proportions hold at
any scale without sampling noise; which opportunity gets which behaviour,
and everything continuous (render delays, dwell, sample times), is drawn
from the seeded random source. What the chain then counts is up to the chain.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping

from loadtest.scenario import Placement, Scenario

HUMAN_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
)
CTV_AGENTS = (
    "Roku/DVP-13.0 (13.0.0.4170-46)",
    "Mozilla/5.0 (Linux; Android 12; AFTKA) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "Mozilla/5.0 (SMART-TV; LINUX; Tizen 7.0) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/5.0 TV Safari/537.36",
)
# Known bots and crawlers (IAB/ABC spiders & bots list style agents).
BOT_AGENTS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/126.0 Safari/537.36",
    "python-requests/2.32.3",
    "curl/8.8.0",
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
)
# Humans get RFC 5737 documentation addresses, which look residential to a
# data-center list; data-center bots come from cloud ranges such lists hold.
HUMAN_NETWORKS = ("192.0.2", "198.51.100", "203.0.113")
DATACENTER_NETWORKS = ("3.{}.{}.{}", "34.{}.{}.{}", "35.184.{}.{}", "52.{}.{}.{}", "54.{}.{}.{}", "104.131.{}.{}")
# Second octet ranges inside 3.0.0.0/9, 34.64.0.0/10, 52.0.0.0/11, 54.64.0.0/11.
_SECOND_OCTET = {"3": (0, 127), "34": (64, 127), "52": (0, 31), "54": (64, 95)}

USER_KINDS = ("human", "bot_known_agent", "bot_datacenter", "bot_human_like")
NOT_RENDERED = ("abandoned", "ad_blocked", "prefetched")


@dataclasses.dataclass(frozen=True, slots=True)
class User:
    id: str
    kind: str  # one of USER_KINDS
    user_agent: str
    ip: str


@dataclasses.dataclass(frozen=True, slots=True)
class PodSlot:
    """OpenRTB 2.6 video pod fields for one slot of one ad break."""

    podid: str
    podseq: int  # 1 first pod in the content (pre-roll), -1 last (post-roll), 0 any
    slotinpod: int  # 1 first, -1 last, 0 any
    poddur: int
    maxseq: int
    break_name: str


@dataclasses.dataclass(frozen=True, slots=True)
class Opportunity:
    """One ad request and what its client will do with the answer."""

    index: int
    seed: int  # the run's
    placement: Placement
    domain: str
    size: tuple[int, int]
    user: User
    deadline_ms: float
    tight_deadline: bool
    # "render", or why the client will not render: abandoned, ad_blocked, prefetched.
    fate: str
    late: bool
    render_delay_ms: float
    retry: bool
    measurable: bool
    # engaged, scrolled_past or below_fold.
    exposure: str
    click: bool
    conversion: bool
    pod: PodSlot | None = None

    @property
    def request_id(self) -> str:
        # Made when asked for rather than stored: at full scale (5.2M
        # opportunities) the strings alone would hold some 300 MB.
        return f"lt-{self.seed}-{self.index}"


def deck(n: int, shares: Mapping[str, float], rng: random.Random, rest: str) -> list[str]:
    """n cards holding each share exactly (largest-remainder counts), the
    remainder `rest`, shuffled."""
    exact = {kind: share * n for kind, share in shares.items()}
    exact[rest] = max(0.0, n - sum(exact.values()))
    counts = {kind: int(value + 1e-9) for kind, value in exact.items()}
    left = n - sum(counts.values())
    for kind in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[:max(0, left)]:
        counts[kind] += 1
    cards = [kind for kind, count in counts.items() for _ in range(count)][:n]
    rng.shuffle(cards)
    return cards


def population(scenario: Scenario, scale: float, rng: random.Random) -> dict[str, list[User]]:
    """Users by kind. Humans each have their own id, agent and IP; each bot
    kind is a small set of identities that make many requests."""
    size = max(100, round(scenario.users.population * scale))
    ctv = any(p.kind == "ctv" for p in scenario.traffic.placements)
    agents = HUMAN_AGENTS + (CTV_AGENTS if ctv else ())
    humans = []
    for i in range(size):
        # Distinct (agent, IP) pairs for up to len(agents) * 762 users.
        network = HUMAN_NETWORKS[(i // len(agents)) % len(HUMAN_NETWORKS)]
        host = 1 + (i // (len(agents) * len(HUMAN_NETWORKS))) % 254
        humans.append(User(f"u{i:07d}", "human", agents[i % len(agents)], f"{network}.{host}"))
    n = scenario.users.bots.identities
    known = [User(f"b{i:05d}", "bot_known_agent", BOT_AGENTS[i % len(BOT_AGENTS)], _human_ip(rng))
             for i in range(n)]
    datacenter = [User(f"d{i:05d}", "bot_datacenter", rng.choice(HUMAN_AGENTS), _datacenter_ip(rng))
                  for i in range(n)]
    human_like = [User(f"h{i:05d}", "bot_human_like", rng.choice(HUMAN_AGENTS), _human_ip(rng)) for i in range(n)]
    return {"human": humans, "bot_known_agent": known, "bot_datacenter": datacenter, "bot_human_like": human_like}


def plan(scenario: Scenario, scale: float, seed: int, max_opportunities: int | None = None) -> list[Opportunity]:
    """Every opportunity of the run, in arrival order."""
    rng = random.Random(seed)
    n = max(1, round(scenario.traffic.opportunities * scale))
    if max_opportunities is not None:
        n = min(n, max_opportunities)
    users = population(scenario, scale, rng)
    b, net, bots = scenario.behaviour, scenario.network, scenario.users.bots
    placements = scenario.traffic.placements
    placement_cards = deck(n, {str(i): p.share for i, p in enumerate(placements) if i}, rng, "0")
    kind_cards = deck(n, {"bot_known_agent": bots.share * bots.known_agent,
                          "bot_datacenter": bots.share * bots.datacenter,
                          "bot_human_like": bots.share * bots.human_like}, rng, "human")
    deadline_cards = deck(n, {"tight": net.tight_deadline_share}, rng, "normal")
    fate_cards = deck(n, {"abandoned": b.abandon_share, "ad_blocked": b.ad_block_share,
                          "prefetched": b.prefetch_share, "late": b.late_share}, rng, "render")
    retry_cards = deck(n, {"retry": b.retry_share}, rng, "once")
    measure_cards = deck(n, {"unmeasurable": b.unmeasurable_share}, rng, "measurable")
    exposure_cards = deck(n, {"engaged": b.exposure.engaged, "scrolled_past": b.exposure.scrolled_past}, rng,
                          "below_fold")
    click_cards = deck(n, {"click": b.click_share}, rng, "none")
    conversion_cards = deck(n, {"conversion": b.conversion_share}, rng, "none")
    pods = _pod_slots(placements, placement_cards, rng)
    found = []
    for i in range(n):
        placement = placements[int(placement_cards[i])]
        pod = pods.get(i)
        kind = kind_cards[i]
        user = rng.choice(users[kind])
        if pod is not None and kind == "human":
            user = pods_user(users["human"], pod.podid)
        tight = deadline_cards[i] == "tight"
        fate = fate_cards[i]
        found.append(Opportunity(
            index=i, seed=seed, placement=placement, domain=rng.choice(placement.domains),
            size=rng.choice(placement.sizes), user=user,
            deadline_ms=net.tight_deadline_ms if tight else net.client_deadline_ms, tight_deadline=tight,
            fate="render" if fate == "late" else fate, late=fate == "late",
            render_delay_ms=b.late_after_expiry_ms if fate == "late" else rng.uniform(*b.render_delay_ms), retry=retry_cards[i] == "retry",
            measurable=measure_cards[i] == "measurable", exposure=exposure_cards[i],
            click=click_cards[i] == "click", conversion=conversion_cards[i] == "conversion" and click_cards[i] == "click",
            pod=pod,
        ))
    return found


def pods_user(humans: list[User], podid: str) -> User:
    """One viewer watches every break of a session."""
    return humans[hash_stable(podid) % len(humans)]


def hash_stable(text: str) -> int:
    value = 2166136261
    for ch in text.encode():
        value = ((value ^ ch) * 16777619) & 0xFFFFFFFF
    return value


def _pod_slots(placements, placement_cards: list[str], rng: random.Random) -> dict[int, PodSlot]:
    """Group each pod placement's opportunities, in arrival order, into
    viewing sessions of ad breaks, each break a pod of slots."""
    slots: dict[int, PodSlot] = {}
    for p_index, placement in enumerate(placements):
        pod = placement.pod
        if pod is None:
            continue
        mine = [i for i, card in enumerate(placement_cards) if card == str(p_index)]
        per_session = len(pod.breaks) * pod.slots
        for position, i in enumerate(mine):
            session, within = divmod(position, per_session)
            break_index, slot = divmod(within, pod.slots)
            name = pod.breaks[break_index]
            podseq = 1 if name == "pre" else -1 if name == "post" else 0
            slotinpod = 1 if slot == 0 else -1 if slot == pod.slots - 1 else 0
            slots[i] = PodSlot(podid=f"{placement.name}-s{session}-b{break_index}", podseq=podseq,
                               slotinpod=slotinpod, poddur=pod.slots * pod.slot_duration_s, maxseq=pod.slots,
                               break_name=name)
    return slots


def _human_ip(rng: random.Random) -> str:
    return f"{rng.choice(HUMAN_NETWORKS)}.{rng.randint(1, 254)}"


def _datacenter_ip(rng: random.Random) -> str:
    pattern = rng.choice(DATACENTER_NETWORKS)
    first = pattern.split(".", 1)[0]
    if first in _SECOND_OCTET:
        low, high = _SECOND_OCTET[first]
        return pattern.format(rng.randint(low, high), rng.randint(0, 255), rng.randint(1, 254))
    if pattern.startswith("35.184"):
        return f"35.{rng.randint(184, 191)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    return pattern.format(rng.randint(0, 255), rng.randint(1, 254))
