"""What an operator sees with standard tools: grpcurl through server
reflection, and promtool on every role's /metrics."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from tests.conftest import ROOT, system_program

SERVICES = {
    "dsp-1": "adchain.v1.BidderService",
    "ssp": "adchain.v1.ExchangeService",
    "adserver": "adchain.v1.AdServerService",
    "verifier": "adchain.v1.VerifierService",
}


def grpcurl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([system_program("grpcurl"), *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_grpcurl_lists_every_roles_service_through_reflection(chain):
    for name, service in SERVICES.items():
        listed = grpcurl("-plaintext", chain.addresses()[name]["grpc"], "list")
        assert listed.returncode == 0, listed.stderr
        names = listed.stdout.split()
        assert service in names
        assert "grpc.health.v1.Health" in names


def test_grpcurl_calls_bid_with_the_specs_simple_banner_request(chain):
    sample = (ROOT / "tests/fixtures/openrtb/request-6.2.1-simple-banner.json").read_text()
    result = grpcurl("-plaintext", "-d", "@", chain.addresses()["dsp-1"]["grpc"], "adchain.v1.BidderService/Bid",
                     stdin=sample)
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert response["id"] == "80ce30c53c16e6ede735f123ef6e32361bfc7b22"
    bid = response["seatbid"][0]["bid"][0]
    assert (bid["impid"], bid["price"], bid["cid"], bid["w"], bid["h"]) == ("1", 6.0, "c-display", 300, 250)


@pytest.mark.parametrize("name", ["dsp-1", "ssp", "adserver", "verifier"])
def test_every_roles_metrics_pass_promtool(chain, name):
    from tests.conftest import banner_request

    chain.ssp.RequestAd(banner_request(), timeout=5)  # so histograms and counters carry data
    text = urllib.request.urlopen(f"http://{chain.addresses()[name]['metrics']}/metrics", timeout=5).read()
    role = "dsp" if name.startswith("dsp") else name
    assert f'adchain_impressions_total{{role="{role}"'.encode() in text
    result = subprocess.run([system_program("promtool"), "check", "metrics"], input=text, capture_output=True,
                            timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
