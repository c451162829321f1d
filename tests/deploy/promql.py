"""Reading the shipped Prometheus rules and Grafana dashboard in tests: rule
names and expressions, dashboard queries with Grafana's variables filled in,
and the metric names an expression reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "adchain.json"

# What Grafana substitutes in a query, as the integration test fills it in.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless",
             "inf", "nan"}


def rules(kind: str) -> list[tuple[str, str]]:
    """(name, expr) of every `record` or `alert` rule in the rule files.

    The files keep a shape this reads without a YAML library: `- record:` or
    `- alert:` first, then `expr:` on one line or as a `|` block."""
    found = []
    for path in RULE_FILES:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            match = re.match(r"\s*- (record|alert): (\S+)\s*$", line)
            if not match or match.group(1) != kind:
                continue
            expr_line = lines[i + 1]
            expr = re.match(r"\s*expr: (.*)$", expr_line).group(1)
            if expr.strip() == "|":
                indent = len(lines[i + 2]) - len(lines[i + 2].lstrip())
                block = []
                for follow in lines[i + 2:]:
                    if follow.strip() and len(follow) - len(follow.lstrip()) < indent:
                        break
                    block.append(follow.strip())
                expr = " ".join(block).strip()
            found.append((match.group(2), expr))
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, query with Grafana's variables substituted) for every
    query of every panel."""
    data = json.loads(DASHBOARD.read_text())
    found = []
    for panel in _panels(data["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"unsubstituted variable in {panel['title']!r}: {expr}"
            found.append((panel["title"], expr))
    return found


def metric_names(expr: str) -> set[str]:
    """Metric and recording-rule names an expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        name = match.group(0)
        following = expr[match.end():].lstrip()
        if following.startswith("(") or name.lower() in _KEYWORDS:
            continue  # a function or aggregation, or a keyword
        if re.fullmatch(r"e\d*", name) and match.start() > 0 and expr[match.start() - 1].isdigit():
            continue  # the exponent of 1e6
        names.add(name)
    return names


def _panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))
