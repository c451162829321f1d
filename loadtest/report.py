"""The load test's report: stage counts and spend from the services' own
GetCounts (the difference between before and after the run), the causes of
every gap and the expected counts from the ground truth, the client-seen
latency and throughput, and the scenario's expectations checked against
them. Rendered as a terminal table, JSON and one self-contained HTML file.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping

from loadtest.scenario import Expectation, Scenario
from loadtest.truth import CAUSE_TEXT, Truth
from services.reconcile import STAGE_ROLE, STAGES, Billing, ChainCounts

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000)


def agreement_tolerance(expected: int) -> int:
    """Counts the services may differ from the truth by: a request whose
    deadline passed as the exchange received it is never auctioned."""
    return max(2, math.ceil(expected * 0.002))


def build(scenario: Scenario, scale: float, seed: int, before: ChainCounts, after: ChainCounts, truth: Truth,
          latencies_ms: list[float], wall_s: float, complete: bool, notes: list[str]) -> dict:
    stages = {s: after.stages[s] - before.stages[s] for s in STAGES}
    spend_micros = after.spend_micros - before.spend_micros
    expected = truth.expected_stages()
    stage_rows = []
    previous = None
    for stage in STAGES:
        value = stages[stage]
        tolerance = agreement_tolerance(expected[stage])
        agrees = abs(value - expected[stage]) <= tolerance
        stage_rows.append({
            "stage": stage, "counted_by": STAGE_ROLE[stage], "count": value,
            "vs_previous": None if previous is None else _ratio(value, previous),
            "discrepancy_pct": None if not previous else round((value - previous) / previous * 100, 3),
            "truth_expects": expected[stage], "agrees": agrees,
        })
        previous = value
    rendered, measurable, viewable = stages["rendered"], stages["measurable"], stages["viewable"]
    money = Billing(served=rendered, viewable=viewable, spend_micros=spend_micros)
    billing = {
        "served": rendered, "measurable": measurable, "viewable": viewable,
        "spend_usd": round(spend_micros / 1e6, 6),
        "cpm_usd": round(money.cpm, 4) if rendered else None,
        "viewable_rate": _ratio(viewable, rendered),
        "viewable_of_measurable": _ratio(viewable, measurable),
        "effective_vcpm_usd": round(money.effective_vcpm, 4) if viewable else None,
    }
    causes = {}
    for gap, found in truth.causes().items():
        causes[gap] = {name: {"count": n, "why": CAUSE_TEXT[name]} for name, n in found.items()}
    report = {
        "scenario": scenario.name, "description": scenario.description, "scale": scale, "seed": seed,
        "complete": complete, "notes": notes,
        "stages": stage_rows,
        "billing": billing,
        "causes": causes,
        "client": truth.other(),
        "truth_agrees": all(row["agrees"] for row in stage_rows),
        "latency_ms": latency_summary(latencies_ms),
        "throughput": {"wall_s": round(wall_s, 3), "ad_requests": len(latencies_ms),
                       "ad_requests_per_s": round(len(latencies_ms) / wall_s, 1) if wall_s else None},
    }
    report["expectations"] = [check(e, report) for e in scenario.expectations]
    report["passed"] = all(e["ok"] for e in report["expectations"]) and complete
    return report


def latency_summary(latencies_ms: list[float]) -> dict:
    ordered = sorted(latencies_ms)
    counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    for value in ordered:
        counts[next((i for i, b in enumerate(LATENCY_BUCKETS_MS) if value <= b), len(LATENCY_BUCKETS_MS))] += 1
    return {
        "p50": _percentile(ordered, 50), "p90": _percentile(ordered, 90), "p99": _percentile(ordered, 99),
        "max": round(ordered[-1], 3) if ordered else None,
        "histogram": [{"le": b, "count": c} for b, c in zip((*LATENCY_BUCKETS_MS, "inf"), counts)],
    }


def metric(name: str, report: Mapping) -> float | None:
    if name == "effective_vcpm":
        return report["billing"]["effective_vcpm_usd"]
    if name == "cpm":
        return report["billing"]["cpm_usd"]
    if name == "truth_agreement":
        return 1.0 if report["truth_agrees"] else 0.0
    top, bottom = name.split("/")
    counts = {row["stage"]: row["count"] for row in report["stages"]}
    return _ratio(counts[top], counts[bottom])


def check(e: Expectation, report: Mapping) -> dict:
    got = metric(e.metric, report)
    ok = got is not None and abs(got - e.value) <= e.tolerance + 1e-12
    return {"metric": e.metric, "expected": e.value, "tolerance": e.tolerance, "got": got, "ok": ok}


def to_json(report: Mapping) -> str:
    return json.dumps(report, indent=2)


def table(report: Mapping) -> str:
    lines = [f"scenario {report['scenario']} at scale {report['scale']:g}, seed {report['seed']}"
             + ("" if report["complete"] else "  (cut short by a limit)")]
    lines += [f"  note: {n}" for n in report["notes"]]
    lines.append("")
    lines.append("counts read from the services:")
    lines.append(f"  {'stage':<12}{'counted by':<11}{'count':>10}{'vs previous':>13}{'truth expects':>15}  agrees")
    for row in report["stages"]:
        gap = "" if row["discrepancy_pct"] is None else f"{row['discrepancy_pct']:+.2f}%"
        lines.append(f"  {row['stage']:<12}{row['counted_by']:<11}{row['count']:>10,}{gap:>13}"
                     f"{row['truth_expects']:>15,}  {'yes' if row['agrees'] else 'NO'}")
    b = report["billing"]
    if "acknowledged" in report["stages"][0]:
        lines.append("")
        lines.append("acknowledged to a client, and kept (from the services' journals):")
        lines.append(f"  {'stage':<12}{'acknowledged':>13}{'lost':>8}{'double counted':>16}")
        for row in report["stages"]:
            lost, double = ("n/a" if row[k] is None else f"{row[k]:,}" for k in ("lost", "double_counted"))
            lines.append(f"  {row['stage']:<12}{row['acknowledged']:>13,}{lost:>8}{double:>16}")
    lines.append("")
    lines.append(f"  served {b['served']:,}   measurable {b['measurable']:,}   viewable {b['viewable']:,}   "
                 f"effective vCPM {_money(b['effective_vcpm_usd'])}")
    lines.append(f"  spend at the ad server's count {_money(b['spend_usd'])} (CPM {_money(b['cpm_usd'])}); "
                 f"viewable rate {_pct(b['viewable_rate'])} of served, {_pct(b['viewable_of_measurable'])} of measurable")
    lines.append("")
    lines.append("why each gap, from what the clients did:")
    for gap, found in report["causes"].items():
        lines.append(f"  {gap}")
        if not found:
            lines.append("    (no gap)")
        for name, item in sorted(found.items(), key=lambda kv: -kv[1]["count"]):
            lines.append(f"    {item['count']:>9,}  {name:<24} {item['why']}")
    c = report["client"]
    extra = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in sorted(c.items()) if k != "opportunities" and v)
    lines.append(f"  client also: {extra or 'nothing else'}")
    lines.append(f"  services agree with the ground truth: {'yes' if report['truth_agrees'] else 'NO'}")
    lat, tp = report["latency_ms"], report["throughput"]
    lines.append("")
    lines.append(f"ad request latency as the client saw it: p50 {_ms(lat['p50'])}  p90 {_ms(lat['p90'])}  "
                 f"p99 {_ms(lat['p99'])}  max {_ms(lat['max'])}")
    lines.append(f"throughput: {tp['ad_requests']:,} ad requests in {tp['wall_s']:.1f}s "
                 f"({tp['ad_requests_per_s'] or 0:,.0f}/s)")
    if report["expectations"]:
        lines.append("")
        lines.append("expectations:")
        for e in report["expectations"]:
            got = "n/a" if e["got"] is None else f"{e['got']:.4f}"
            lines.append(f"  {'ok  ' if e['ok'] else 'FAIL'}  {e['metric']:<22} {got} "
                         f"(expected {e['expected']:.4f} ± {e['tolerance']:g})")
    return "\n".join(lines)


def to_html(report: Mapping) -> str:
    """One file, no external assets: a funnel of the stages and a latency
    histogram as inline SVG."""
    rows = report["stages"]
    top = max((r["count"] for r in rows), default=0) or 1
    bar_h, width = 34, 560
    funnel = []
    for i, r in enumerate(rows):
        w = max(2, r["count"] / top * width)
        x, y = (width - w) / 2 + 150, i * (bar_h + 8)
        gap = "" if r["discrepancy_pct"] is None else f" ({r['discrepancy_pct']:+.2f}%)"
        funnel.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#3b7dd8" rx="3"/>'
                      f'<text x="0" y="{y + 22}" class="l">{r["stage"]} ({r["counted_by"]})</text>'
                      f'<text x="{150 + width + 10}" y="{y + 22}" class="l">{r["count"]:,}{gap}</text>')
    funnel_svg = (f'<svg width="900" height="{len(rows) * (bar_h + 8)}" role="img" aria-label="stage funnel">'
                  + "".join(funnel) + "</svg>")
    hist = report["latency_ms"]["histogram"]
    peak = max((h["count"] for h in hist), default=0) or 1
    bw, hh = 46, 180
    bars = []
    for i, h in enumerate(hist):
        bh = h["count"] / peak * hh
        bars.append(f'<rect x="{i * bw + 4}" y="{hh - bh + 10:.1f}" width="{bw - 8}" height="{bh:.1f}" fill="#d8843b"/>'
                    f'<text x="{i * bw + bw / 2}" y="{hh + 26}" class="s" text-anchor="middle">≤{h["le"]}</text>'
                    f'<text x="{i * bw + bw / 2}" y="{hh - bh + 6:.1f}" class="s" text-anchor="middle">{h["count"]}</text>')
    hist_svg = (f'<svg width="{len(hist) * bw + 10}" height="{hh + 40}" role="img" aria-label="latency histogram">'
                + "".join(bars) + "</svg>")
    esc = html.escape
    causes = "".join(
        f"<tr><td>{esc(gap)}</td><td>{esc(name)}</td><td class=n>{item['count']:,}</td><td>{esc(item['why'])}</td></tr>"
        for gap, found in report["causes"].items() for name, item in found.items())
    stages = "".join(
        f"<tr><td>{r['stage']}</td><td>{r['counted_by']}</td><td class=n>{r['count']:,}</td>"
        f"<td class=n>{'' if r['discrepancy_pct'] is None else format(r['discrepancy_pct'], '+.2f') + '%'}</td>"
        f"<td class=n>{r['truth_expects']:,}</td><td>{'yes' if r['agrees'] else 'NO'}</td></tr>" for r in rows)
    expectations = "".join(
        f"<tr><td>{esc(e['metric'])}</td><td class=n>{'n/a' if e['got'] is None else format(e['got'], '.4f')}</td>"
        f"<td class=n>{e['expected']:.4f} ± {e['tolerance']:g}</td><td>{'ok' if e['ok'] else 'FAIL'}</td></tr>"
        for e in report["expectations"])
    b, lat, tp = report["billing"], report["latency_ms"], report["throughput"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>adchain load test: {esc(report['scenario'])}</title>
<style>
body{{font:14px system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}} .n{{text-align:right}}
.l{{font:13px system-ui,sans-serif}} .s{{font:10px system-ui,sans-serif}} .big{{font-size:20px;margin-right:2em}}
</style></head><body>
<h1>{esc(report['scenario'])}</h1><p>{esc(report['description'])}</p>
<p>scale {report['scale']:g}, seed {report['seed']}{'' if report['complete'] else ' (cut short by a limit)'}</p>
<p><span class=big>served {b['served']:,}</span><span class=big>measurable {b['measurable']:,}</span>
<span class=big>viewable {b['viewable']:,}</span><span class=big>effective vCPM {_money(b['effective_vcpm_usd'])}</span></p>
<p>spend {_money(b['spend_usd'])} at CPM {_money(b['cpm_usd'])}; viewable rate {_pct(b['viewable_rate'])}</p>
<h2>Stages (counts from the services)</h2>{funnel_svg}
<table><tr><th>stage</th><th>counted by</th><th>count</th><th>vs previous</th><th>truth expects</th><th>agrees</th></tr>{stages}</table>
<h2>Causes of each gap (ground truth)</h2>
<table><tr><th>gap</th><th>cause</th><th>count</th><th>what happened</th></tr>{causes}</table>
<h2>Ad request latency</h2><p>p50 {_ms(lat['p50'])}, p90 {_ms(lat['p90'])}, p99 {_ms(lat['p99'])};
{tp['ad_requests']:,} requests in {tp['wall_s']:.1f}s ({tp['ad_requests_per_s'] or 0:,.0f}/s)</p>{hist_svg}
<h2>Expectations</h2><table><tr><th>metric</th><th>got</th><th>expected</th><th></th></tr>{expectations}</table>
</body></html>
"""


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 6) if b else None


def _percentile(ordered: list[float], p: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))], 3)


def _money(value: float | None) -> str:
    return "n/a" if value is None else f"${value:,.2f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"
