"""A load-test scenario: the world the load test plays, read from TOML into
frozen dataclasses and validated with every problem reported together.

A scenario describes traffic (inventory, formats, floors, auction type, deals,
CTV pods), users (a population, its bots), network and timing (the client's
deadline, the DSPs' latencies and tmax through the chain it configures) and
behaviour (abandonment, ad blockers, prefetch, unmeasurable environments, how
long ads stay in view, retries, late pixels, clicks). It never states counts:
the chain's services count what the clients' behaviour makes happen.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SHIPPED = Path(__file__).resolve().parent / "scenarios"
INVENTORY_KINDS = ("site", "app", "ctv")
FORMATS = ("banner", "video")
POD_BREAKS = ("pre", "mid", "post")
# AdCOM device types: 2 personal computer, 4 phone, 3 connected TV.
DEFAULT_DEVICE_TYPE = {"site": 2, "app": 4, "ctv": 3}
CHAIN_INSTANCES = ("dsp-1", "dsp-2", "ssp", "adserver", "verifier")
STAGES = ("won", "returned", "rendered", "measurable", "viewable")
# Metrics an expectation may name besides "STAGE/STAGE" ratios.
NAMED_METRICS = ("effective_vcpm", "cpm", "truth_agreement")


class ScenarioError(ValueError):
    """Every problem found in one scenario file, listed together."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"invalid scenario {source}:\n  " + "\n  ".join(problems))


@dataclasses.dataclass(frozen=True)
class Pod:
    """CTV ad breaks (OpenRTB 2.6 §7.6): each viewing session plays these
    breaks, each a pod of `slots` ads of `slot_duration_s` seconds."""

    breaks: tuple[str, ...] = ("pre", "mid", "post")
    slots: int = 3
    slot_duration_s: int = 30


@dataclasses.dataclass(frozen=True)
class Placement:
    """One line of the inventory mix: where the ad shows and what it is."""

    name: str
    kind: str  # site, app or ctv
    share: float  # of the opportunities
    domains: tuple[str, ...]  # site domains or app bundles
    format: str  # banner or video
    sizes: tuple[tuple[int, int], ...]
    floor_cpm: float = 0.0
    deal_id: str = ""  # a private-marketplace deal offered on this inventory
    device_type: int = 0
    pod: Pod | None = None


@dataclasses.dataclass(frozen=True)
class Traffic:
    opportunities: int  # at scale 1
    rate_per_s: float = 0.0  # 0: as fast as `concurrency` clients go
    concurrency: int = 16
    auction_type: int = 0  # 0: the exchange's default
    tmax_ms: int = 0  # 0: the exchange's default
    placements: tuple[Placement, ...] = ()


@dataclasses.dataclass(frozen=True)
class Bots:
    """Share of the opportunities that bots make, and how that share splits
    between kinds: known bot user agents (GIVT), data-center IPs (GIVT), and
    bots that look human (SIVT: human agents and residential IPs, betrayed by
    rendering within milliseconds and by their frequency)."""

    share: float = 0.0
    known_agent: float = 0.0
    datacenter: float = 0.0
    human_like: float = 0.0
    identities: int = 40  # distinct (agent, IP) pairs per kind


@dataclasses.dataclass(frozen=True)
class Users:
    population: int = 100_000  # at scale 1; at least 100 after scaling
    bots: Bots = Bots()


@dataclasses.dataclass(frozen=True)
class Network:
    # How long the page waits for its ad (caller_deadline_ms, judged by the
    # exchange from arrival; the call's gRPC deadline adds transit time).
    client_deadline_ms: float = 2000.0
    # Pages that give up sooner than the auction takes (slow page, user gone).
    tight_deadline_share: float = 0.0
    tight_deadline_ms: float = 10.0


@dataclasses.dataclass(frozen=True)
class Exposure:
    """The viewport model for a measurable ad: `engaged` views stay at least
    half in view past the MRC duration, `scrolled_past` ones are in view but
    leave too soon, the rest stay below the fold. Tags sample every
    100-200 ms."""

    engaged: float = 0.7
    scrolled_past: float = 0.15
    sample_interval_ms: tuple[int, int] = (100, 200)


@dataclasses.dataclass(frozen=True)
class Behaviour:
    # Of returned ads, never rendered: the user left, an ad blocker blocked
    # the creative, or the ad was prefetched for a slot never shown.
    abandon_share: float = 0.0
    ad_block_share: float = 0.0
    prefetch_share: float = 0.0
    # Of rendered ads, the render beacon arrives after the token expired
    # (a player that reports its impression late).
    late_share: float = 0.0
    late_after_expiry_ms: float = 500.0
    # Humans begin to render this long after the ad returns.
    render_delay_ms: tuple[float, float] = (50.0, 400.0)
    # Of rendered ads, the beacon is fired twice (a retry that duplicates it).
    retry_share: float = 0.0
    # Of rendered ads, the verification tag cannot read geometry.
    unmeasurable_share: float = 0.0
    exposure: Exposure = Exposure()
    click_share: float = 0.0  # of rendered ads
    conversion_share: float = 0.0  # of clicks


@dataclasses.dataclass(frozen=True)
class Expectation:
    """A ratio ("rendered/returned") or a named metric, with its tolerance."""

    metric: str
    value: float
    tolerance: float


@dataclasses.dataclass(frozen=True)
class Limits:
    max_duration_s: float = 600.0


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    traffic: Traffic
    users: Users = Users()
    network: Network = Network()
    behaviour: Behaviour = Behaviour()
    # Settings of the local chain's instances (role TOML as in services/local/),
    # applied when the load test starts the chain itself.
    chain: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict, hash=False)
    expectations: tuple[Expectation, ...] = ()
    limits: Limits = Limits()


def find(name_or_path: str) -> Path:
    """A shipped scenario by name, or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.exists():
        return path
    shipped = SHIPPED / f"{name_or_path}.toml"
    if shipped.exists():
        return shipped
    raise FileNotFoundError(f"no scenario {name_or_path!r}; shipped: {', '.join(shipped_names())}")


def shipped_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.toml"))


def load(name_or_path: str) -> Scenario:
    path = find(name_or_path)
    return parse(tomllib.loads(path.read_text()), source=str(path))


def parse(data: Mapping[str, Any], source: str = "<scenario>") -> Scenario:
    """Build and validate; raises ScenarioError listing every problem."""
    r = _Reader([])
    top = r.table(data, "", ("scenario", "traffic", "users", "network", "behaviour", "chain", "expect", "limits"))
    head = r.table(top.get("scenario", {}), "scenario", ("name", "description"))
    traffic = _traffic(r, top.get("traffic"))
    users_t = r.table(top.get("users", {}), "users", ("population", "bots"))
    bots_t = r.table(users_t.get("bots", {}), "users.bots",
                     ("share", "known_agent", "datacenter", "human_like", "identities"))
    bots = Bots(
        share=r.share(bots_t, "users.bots", "share", 0.0),
        known_agent=r.share(bots_t, "users.bots", "known_agent", 0.0),
        datacenter=r.share(bots_t, "users.bots", "datacenter", 0.0),
        human_like=r.share(bots_t, "users.bots", "human_like", 0.0),
        identities=r.integer(bots_t, "users.bots", "identities", 40, minimum=1),
    )
    if bots.share > 0 and abs(bots.known_agent + bots.datacenter + bots.human_like - 1.0) > 1e-9:
        r.problem("users.bots: known_agent + datacenter + human_like must add up to 1")
    users = Users(population=r.integer(users_t, "users", "population", 100_000, minimum=1), bots=bots)
    net_t = r.table(top.get("network", {}), "network",
                    ("client_deadline_ms", "tight_deadline_share", "tight_deadline_ms"))
    network = Network(
        client_deadline_ms=r.number(net_t, "network", "client_deadline_ms", 2000.0, minimum=1),
        tight_deadline_share=r.share(net_t, "network", "tight_deadline_share", 0.0),
        tight_deadline_ms=r.number(net_t, "network", "tight_deadline_ms", 10.0, minimum=1),
    )
    behaviour = _behaviour(r, top.get("behaviour", {}))
    chain = r.table(top.get("chain", {}), "chain", CHAIN_INSTANCES)
    for instance, settings in chain.items():
        r.table(settings, f"chain.{instance}", None)
    expectations = _expectations(r, top.get("expect", []))
    limits_t = r.table(top.get("limits", {}), "limits", ("max_duration_s",))
    limits = Limits(max_duration_s=r.number(limits_t, "limits", "max_duration_s", 600.0, minimum=1))
    name = r.string(head, "scenario", "name", "")
    if not name:
        r.problem("scenario.name: is required")
    if r.problems:
        raise ScenarioError(source, r.problems)
    return Scenario(name=name, description=r.string(head, "scenario", "description", ""), traffic=traffic,
                    users=users, network=network, behaviour=behaviour, chain=chain, expectations=expectations,
                    limits=limits)


def _traffic(r: _Reader, data: Any) -> Traffic:
    if data is None:
        r.problem("traffic: is required")
        data = {}
    t = r.table(data, "traffic", ("opportunities", "rate_per_s", "concurrency", "auction_type", "tmax_ms",
                                  "placements"))
    if "opportunities" not in t:
        r.problem("traffic.opportunities: is required")
    auction_type = r.integer(t, "traffic", "auction_type", 0)
    if auction_type not in (0, 1, 2):
        r.problem("traffic.auction_type: must be 1 (first price) or 2 (second price plus)")
    placements = []
    raw = t.get("placements", [])
    if not isinstance(raw, list) or not raw:
        r.problem("traffic.placements: at least one placement ([[traffic.placements]]) is required")
        raw = []
    for i, item in enumerate(raw):
        placements.append(_placement(r, item, f"traffic.placements[{i}]"))
    if placements and abs(sum(p.share for p in placements) - 1.0) > 1e-6:
        r.problem(f"traffic.placements: shares must add up to 1, got {sum(p.share for p in placements):g}")
    return Traffic(
        opportunities=r.integer(t, "traffic", "opportunities", 1, minimum=1),
        rate_per_s=r.number(t, "traffic", "rate_per_s", 0.0, minimum=0),
        concurrency=r.integer(t, "traffic", "concurrency", 16, minimum=1),
        auction_type=auction_type,
        tmax_ms=r.integer(t, "traffic", "tmax_ms", 0, minimum=0),
        placements=tuple(placements),
    )


def _placement(r: _Reader, data: Any, where: str) -> Placement:
    p = r.table(data, where, ("name", "kind", "share", "domains", "format", "sizes", "floor_cpm", "deal_id",
                              "device_type", "pod"))
    kind = r.string(p, where, "kind", "site")
    if kind not in INVENTORY_KINDS:
        r.problem(f"{where}.kind: must be one of {', '.join(INVENTORY_KINDS)}, got {kind!r}")
    fmt = r.string(p, where, "format", "banner")
    if fmt not in FORMATS:
        r.problem(f"{where}.format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    sizes = []
    for text in r.strings(p, where, "sizes", ("300x250",)):
        w, sep, h = text.lower().partition("x")
        if not (sep and w.isdigit() and h.isdigit()):
            r.problem(f"{where}.sizes: {text!r} is not WIDTHxHEIGHT")
            continue
        sizes.append((int(w), int(h)))
    domains = r.strings(p, where, "domains", ())
    if not domains:
        r.problem(f"{where}.domains: at least one site domain or app bundle is required")
    pod = None
    if "pod" in p:
        pt = r.table(p["pod"], f"{where}.pod", ("breaks", "slots", "slot_duration_s"))
        breaks = r.strings(pt, f"{where}.pod", "breaks", ("pre", "mid", "post"))
        for b in breaks:
            if b not in POD_BREAKS:
                r.problem(f"{where}.pod.breaks: {b!r} is not one of {', '.join(POD_BREAKS)}")
        pod = Pod(breaks=breaks, slots=r.integer(pt, f"{where}.pod", "slots", 3, minimum=1),
                  slot_duration_s=r.integer(pt, f"{where}.pod", "slot_duration_s", 30, minimum=1))
        if fmt != "video":
            r.problem(f"{where}.pod: ad pods are video; set format = \"video\"")
    return Placement(
        name=r.string(p, where, "name", where), kind=kind, share=r.share(p, where, "share", 0.0),
        domains=domains, format=fmt, sizes=tuple(sizes), floor_cpm=r.number(p, where, "floor_cpm", 0.0, minimum=0),
        deal_id=r.string(p, where, "deal_id", ""),
        device_type=r.integer(p, where, "device_type", DEFAULT_DEVICE_TYPE.get(kind, 2), minimum=1), pod=pod,
    )


def _behaviour(r: _Reader, data: Any) -> Behaviour:
    w = "behaviour"
    b = r.table(data, w, ("abandon_share", "ad_block_share", "prefetch_share", "late_share", "late_after_expiry_ms",
                          "render_delay_ms", "retry_share", "unmeasurable_share", "exposure", "click_share",
                          "conversion_share"))
    e = r.table(b.get("exposure", {}), f"{w}.exposure", ("engaged", "scrolled_past", "sample_interval_ms"))
    exposure = Exposure(engaged=r.share(e, f"{w}.exposure", "engaged", 0.7),
                        scrolled_past=r.share(e, f"{w}.exposure", "scrolled_past", 0.15),
                        sample_interval_ms=r.pair(e, f"{w}.exposure", "sample_interval_ms", (100, 200), minimum=1))
    if exposure.engaged + exposure.scrolled_past > 1 + 1e-9:
        r.problem(f"{w}.exposure: engaged + scrolled_past must not exceed 1")
    behaviour = Behaviour(
        abandon_share=r.share(b, w, "abandon_share", 0.0), ad_block_share=r.share(b, w, "ad_block_share", 0.0),
        prefetch_share=r.share(b, w, "prefetch_share", 0.0), late_share=r.share(b, w, "late_share", 0.0),
        late_after_expiry_ms=r.number(b, w, "late_after_expiry_ms", 500.0, minimum=1),
        render_delay_ms=r.pair(b, w, "render_delay_ms", (50.0, 400.0), minimum=0),
        retry_share=r.share(b, w, "retry_share", 0.0), unmeasurable_share=r.share(b, w, "unmeasurable_share", 0.0),
        exposure=exposure, click_share=r.share(b, w, "click_share", 0.0),
        conversion_share=r.share(b, w, "conversion_share", 0.0),
    )
    if behaviour.abandon_share + behaviour.ad_block_share + behaviour.prefetch_share + behaviour.late_share > 1 + 1e-9:
        r.problem(f"{w}: abandon, ad_block, prefetch and late shares must not exceed 1 together")
    return behaviour


_RATIO = re.compile(r"^(\w+)/(\w+)$")


def _expectations(r: _Reader, data: Any) -> tuple[Expectation, ...]:
    if not isinstance(data, list):
        r.problem("expect: must be an array of tables ([[expect]])")
        return ()
    found = []
    for i, item in enumerate(data):
        where = f"expect[{i}]"
        e = r.table(item, where, ("metric", "value", "tolerance"))
        metric = r.string(e, where, "metric", "")
        ratio = _RATIO.match(metric)
        if not (metric in NAMED_METRICS or (ratio and ratio.group(1) in STAGES and ratio.group(2) in STAGES)):
            r.problem(f"{where}.metric: {metric!r} is neither STAGE/STAGE (stages: {', '.join(STAGES)}) "
                      f"nor one of {', '.join(NAMED_METRICS)}")
        if "value" not in e:
            r.problem(f"{where}.value: is required")
        found.append(Expectation(metric, r.number(e, where, "value", 0.0),
                                 r.number(e, where, "tolerance", 0.0, minimum=0)))
    return tuple(found)


class _Reader:
    """Typed reads from TOML tables that record problems instead of raising."""

    def __init__(self, problems: list[str]):
        self.problems = problems

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def table(self, data: Any, where: str, known: tuple[str, ...] | None) -> dict:
        if not isinstance(data, dict):
            self.problem(f"{where or 'scenario'}: must be a table")
            return {}
        if known is not None:
            for key in data:
                if key not in known:
                    self.problem(f"{where + '.' if where else ''}{key}: unknown setting")
        return data

    def _typed(self, t: dict, where: str, key: str, default, types, what: str):
        if key not in t:
            return default
        value = t[key]
        if isinstance(value, bool) or not isinstance(value, types):
            self.problem(f"{where}.{key}: must be {what}, got {value!r}")
            return default
        return value

    def number(self, t, where, key, default, minimum=None) -> float:
        value = float(self._typed(t, where, key, default, (int, float), "a number"))
        if minimum is not None and value < minimum:
            self.problem(f"{where}.{key}: must be at least {minimum:g}, got {value:g}")
        return value

    def integer(self, t, where, key, default, minimum=None) -> int:
        value = self._typed(t, where, key, default, int, "an integer")
        if minimum is not None and value < minimum:
            self.problem(f"{where}.{key}: must be at least {minimum}, got {value}")
        return value

    def share(self, t, where, key, default) -> float:
        value = float(self._typed(t, where, key, default, (int, float), "a number"))
        if not 0.0 <= value <= 1.0:
            self.problem(f"{where}.{key}: a share must be between 0 and 1, got {value:g}")
        return value

    def string(self, t, where, key, default) -> str:
        return self._typed(t, where, key, default, str, "a string")

    def strings(self, t, where, key, default) -> tuple[str, ...]:
        value = self._typed(t, where, key, list(default), list, "a list of strings")
        if not all(isinstance(v, str) for v in value):
            self.problem(f"{where}.{key}: must be a list of strings")
            return tuple(default)
        return tuple(value)

    def pair(self, t, where, key, default, minimum=None) -> tuple:
        value = self._typed(t, where, key, list(default), list, "a [low, high] pair")
        if (len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                or value[0] > value[1] or (minimum is not None and value[0] < minimum)):
            self.problem(f"{where}.{key}: must be [low, high] with {minimum} <= low <= high, got {value!r}")
            return tuple(default)
        return tuple(value)
