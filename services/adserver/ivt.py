"""Invalid-traffic filtering before an impression counts (MRC IVT guidelines).

General invalid traffic (GIVT), by list: known bot and crawler user agents,
and data-center IP ranges. Sophisticated invalid traffic (SIVT), by
heuristic: a render faster than a person's browser could manage after the ad
was returned, and more impressions per viewer per minute than a person
produces. Invalid impressions are counted by reason and never billed.

The shipped lists are a starting point: operators load their provider's
published lists (IAB/ABC spiders and bots list, cloud providers' published
address ranges) through configuration.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import socket
import threading

REASONS = ("bot_user_agent", "datacenter_ip", "render_too_fast", "user_rate_exceeded")
USER_AGENT_CACHE_SIZE = 8192

# Case-insensitive substrings of user agents that declare automation.
DEFAULT_BOT_AGENTS = (
    "bot", "crawler", "spider", "slurp", "headlesschrome", "phantomjs", "python-requests", "python-urllib",
    "curl/", "wget/", "go-http-client", "java/", "okhttp", "scrapy", "httpclient", "facebookexternalhit",
    "lighthouse",
)
# Address ranges of large cloud and hosting providers (from their published lists).
DEFAULT_DATACENTER_CIDRS = (
    "3.0.0.0/9",        # Amazon Web Services
    "52.0.0.0/11",      # Amazon Web Services
    "54.64.0.0/11",     # Amazon Web Services
    "34.64.0.0/10",     # Google Cloud
    "35.184.0.0/13",    # Google Cloud
    "20.33.0.0/16",     # Microsoft Azure
    "40.74.0.0/15",     # Microsoft Azure
    "104.131.0.0/16",   # DigitalOcean
    "159.203.0.0/16",   # DigitalOcean
    "138.68.0.0/16",    # DigitalOcean
    "2600:1f00::/24",   # Amazon Web Services (IPv6)
)


@dataclasses.dataclass(frozen=True)
class IvtSettings:
    bot_user_agents: tuple[str, ...] = DEFAULT_BOT_AGENTS
    datacenter_cidrs: tuple[str, ...] = DEFAULT_DATACENTER_CIDRS
    # A browser must fetch and lay out the creative after the ad returns.
    min_render_ms: int = 30
    # More renders than this per viewer in any 60 s is not a person.
    max_impressions_per_user_per_minute: int = 20

    def validate(self, where: str) -> list[str]:
        problems = []
        for i, cidr in enumerate(self.datacenter_cidrs):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                problems.append(f"{where}.datacenter_cidrs.{i}: {cidr!r} is not a network")
        if self.min_render_ms < 0:
            problems.append(f"{where}.min_render_ms: must not be negative")
        if self.max_impressions_per_user_per_minute < 1:
            problems.append(f"{where}.max_impressions_per_user_per_minute: must be at least 1")
        return problems


class InvalidTrafficFilter:
    def __init__(self, settings: IvtSettings):
        agents = tuple(a.lower() for a in settings.bot_user_agents)
        self._ranges = DatacenterRanges(settings.datacenter_cidrs)
        self._min_render_ms = settings.min_render_ms
        self._per_minute = settings.max_impressions_per_user_per_minute
        self._lock = threading.Lock()
        # viewer's hash -> render times in the last minute (one time, or a
        # list of them: see _add), in the order viewers last rendered (a
        # dict keeps insertion order; a render re-inserts its viewer). The
        # hash stands for the viewer: an int is half a user id's string, and
        # two of a minute's viewers sharing a 64-bit hash is vanishingly rare.
        self._recent: dict[int, int | list[int]] = {}
        self._sweeps = 0

        # Real traffic carries a few thousand distinct user agents, so each is
        # matched against the list once, not once per render.
        @functools.lru_cache(maxsize=USER_AGENT_CACHE_SIZE)
        def declares_automation(user_agent: str) -> bool:
            agent = user_agent.lower()
            return any(marker in agent for marker in agents)

        self._declares_automation = declares_automation

    def classify(self, user_agent: str, ip: str, user_key: str, returned_at_ms: int, now_ms: int) -> str | None:
        """The invalid-traffic reason for a render, or None when it looks human.
        Every render attempt counts toward the viewer's rate."""
        rate_exceeded = self._count_render(user_key or ip, now_ms)
        if self._declares_automation(user_agent):
            return "bot_user_agent"
        if ip and ip in self._ranges:
            return "datacenter_ip"
        if now_ms - returned_at_ms < self._min_render_ms:
            return "render_too_fast"
        if rate_exceeded:
            return "user_rate_exceeded"
        return None

    def reset(self) -> None:
        with self._lock:
            self._recent.clear()

    def restore(self, viewer: str, at_ms: int) -> None:
        """A render attempt from before a restart (oldest first), back in the
        viewer's window."""
        if viewer:
            with self._lock:
                self._add(viewer, at_ms, at_ms - 60_000)

    def _count_render(self, viewer: str, now_ms: int) -> bool:
        if not viewer:
            return False
        window_start = now_ms - 60_000
        recent = self._recent
        with self._lock:
            exceeded = self._add(viewer, now_ms, window_start) > self._per_minute
            self._sweeps += 1
            if self._sweeps % 10_000 == 0:
                # Forget viewers idle for a minute. They wait in the order they
                # last rendered, so the sweep looks only at those it forgets,
                # never at every viewer; this viewer, just seen, ends it.
                idle = []
                for oldest, times in recent.items():
                    if _last(times) > window_start:
                        break
                    idle.append(oldest)
                for oldest in idle:
                    del recent[oldest]
        return exceeded

    def _add(self, viewer: str, at_ms: int, window_start: int) -> int:
        """Record a render at `at_ms`; how many the viewer has in the window.

        A minute of traffic at full rate is hundreds of thousands of viewers,
        most with one render in it: a viewer's times are one integer until it
        has a second, then a list of at most limit + 1 (enough to tell that
        the limit is passed), never a deque (600 bytes each)."""
        recent = self._recent
        key = hash(viewer)
        times = recent.pop(key, None)  # back in, last: it rendered most recently
        if times is None:
            recent[key] = at_ms
            return 1
        if type(times) is int:
            if times > window_start:
                recent[key] = [times, at_ms]
                return 2
            recent[key] = at_ms
            return 1
        kept = [t for t in times if t > window_start]
        kept.append(at_ms)
        if len(kept) > self._per_minute + 1:
            del kept[0]
        recent[key] = kept if len(kept) > 1 else kept[0]
        return len(kept)


def _last(times: int | list[int]) -> int:
    return times if type(times) is int else times[-1]


class DatacenterRanges:
    """Address ranges, as one set of network numbers per prefix length: a
    lookup costs one set probe per distinct prefix length, however many
    ranges a provider publishes (AWS alone lists thousands)."""

    def __init__(self, cidrs: tuple[str, ...]):
        numbers: dict[tuple[int, int], set[int]] = {}  # (address bits, prefix length) -> network numbers
        for cidr in cidrs:
            network = ipaddress.ip_network(cidr, strict=False)
            host_bits = network.max_prefixlen - network.prefixlen
            numbers.setdefault((network.max_prefixlen, network.prefixlen), set()).add(
                int(network.network_address) >> host_bits)
        # address bits -> [(host bits to shift away, network numbers of that prefix length)]
        self._lookups: dict[int, list[tuple[int, frozenset[int]]]] = {32: [], 128: []}
        for (bits, length), found in sorted(numbers.items()):
            self._lookups[bits].append((bits - length, frozenset(found)))

    def __contains__(self, ip: str) -> bool:
        parsed = _parse_address(ip)
        if parsed is None:
            return False
        bits, value = parsed
        for shift, numbers in self._lookups[bits]:
            if value >> shift in numbers:
                return True
        return False


def _parse_address(ip: str) -> tuple[int, int] | None:
    """(32 or 128, the address as an integer), or None when `ip` is not an address."""
    try:
        return 32, int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
    except OSError:
        pass
    try:
        return 128, int.from_bytes(socket.inet_pton(socket.AF_INET6, ip), "big")
    except OSError:
        pass
    try:  # what inet_pton does not take but ipaddress does (an IPv6 zone, "fe80::1%eth0")
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    return address.max_prefixlen, int(address)
