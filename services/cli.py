"""The `adchain` command.

    adchain serve ROLE --config FILE     serve one role (dsp, ssp, adserver, verifier)
    adchain up [--addresses FILE] [--prometheus] [--data DIR]
                                         the whole chain as local processes, supervised
    adchain loadtest SCENARIO            play a scenario's world through the chain and report
    adchain demo                         the chain, seed-example at a small scale, the report
    adchain reconcile --addresses FILE   the media plan's numbers and the cause of every gap
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()  # role modules are imported lazily, after this
    parser = argparse.ArgumentParser(prog="adchain", description="Programmatic ad call chain, counted at every link.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve one role")
    serve.add_argument("role", choices=("dsp", "ssp", "adserver", "verifier"))
    serve.add_argument("--config", type=Path, help="TOML (or JSON) settings; ADCHAIN_* variables override")
    serve.add_argument("--ready-file", type=Path, help="write the bound addresses here as JSON once serving")

    up = commands.add_parser("up", help="start the whole chain locally until Ctrl-C or SIGTERM")
    up.add_argument("--addresses", type=Path, help="write every role's gRPC and metrics address here as JSON")
    up.add_argument("--prometheus", action="store_true",
                    help="also start a local Prometheus scraping the chain, with deploy/prometheus/rules loaded")
    _chain_options(up)

    loadtest = commands.add_parser("loadtest", help="play a scenario through the chain and report the discrepancies")
    loadtest.add_argument("scenario", help="a shipped scenario's name (loadtest/scenarios/NAME.toml) or a TOML path")
    loadtest.add_argument("--addresses", type=Path, help="run against this chain (the file `adchain up --addresses` "
                                                         "writes); default: start a local chain set up by the scenario")
    loadtest.add_argument("--scale", type=float, default=0.001, help="factor on the scenario's volume (default 0.001)")
    loadtest.add_argument("--seed", type=int, default=1)
    loadtest.add_argument("--duration", type=float,
                          help="stop starting opportunities after this many seconds "
                               "(default: the scenario's [limits] max_duration_s)")
    loadtest.add_argument("--max-opportunities", type=int, help="at most this many opportunities")
    loadtest.add_argument("--bulk", action="store_true",
                          help="play the same world through the batch RPCs (RequestAds, RecordImpressions, "
                               "RecordExposures), as an edge collector forwards many pages' calls")
    loadtest.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    loadtest.add_argument("--html", type=Path, help="also write a self-contained HTML report here")
    loadtest.add_argument("--run-dir", type=Path, help="where the local chain's configs and logs go")
    _data_option(loadtest)

    demo = commands.add_parser("demo", help="start the chain, run seed-example at a small scale, print the report")
    demo.add_argument("--scale", type=float, default=0.001, help="factor on seed-example's 5.2M opportunities")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--run-dir", type=Path, help="where the local chain's configs and logs go")

    reconcile = commands.add_parser("reconcile", help="read every role's counts and attribute every gap to a cause")
    source = reconcile.add_mutually_exclusive_group(required=True)
    source.add_argument("--addresses", type=Path, help="the file `adchain up --addresses` wrote (a running chain)")
    source.add_argument("--ledgers", type=Path, help="a data folder of ledger files (`adchain up --data DIR`): "
                                                     "the same report from the files alone, the chain stopped or not")
    reconcile.add_argument("--json", action="store_true", help="print one JSON object")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    args.started = started
    commands_by_name = {"serve": _serve, "up": _up, "loadtest": _loadtest, "demo": _demo, "reconcile": _reconcile}
    return commands_by_name[args.command](args)


def _chain_options(parser: argparse.ArgumentParser) -> None:
    from services.local.chain import DEFAULTS

    parser.add_argument("--config-dir", type=Path, default=DEFAULTS,
                        help="folder with dsp-1.toml, dsp-2.toml, ssp.toml, adserver.toml, verifier.toml")
    parser.add_argument("--run-dir", type=Path, help="where configs and logs of the processes go (default: a temp dir)")
    _data_option(parser)


def _data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path,
                        help="where the roles' ledgers live (default: inside the run folder); a chain started "
                             "again on the same folder resumes the same counts")


def _serve(args: argparse.Namespace) -> int:
    from services.roles import ROLES
    from services.runtime import config, server

    role = ROLES[args.role]
    try:
        settings = config.load(role.settings_type, args.config)
    except config.ConfigError as error:
        logging.getLogger("adchain").error("%s", error)
        return 2
    server.serve(role, settings, args.ready_file, started=args.started)
    return 0


def _up(args: argparse.Namespace) -> int:
    from services.local import chain as local_chain

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    chain = local_chain.start(args.config_dir, args.run_dir, prometheus=args.prometheus, data_dir=args.data)
    try:
        _print_addresses(chain)
        if chain.prometheus is not None:
            print(f"prometheus {chain.prometheus.url}  (dashboard: deploy/grafana/adchain.json)")
        elif args.prometheus:
            print("prometheus is not installed (not on PATH); the chain runs without it", file=sys.stderr)
        if args.addresses:
            chain.write_addresses(args.addresses)
            print(f"addresses written to {args.addresses}")
        print(f"logs in {chain.run_dir}, ledgers in {chain.data_dir}; Ctrl-C stops the chain", flush=True)
        # The chain restarts a role that exits (and logs it); only a signal
        # stops it.
        while not stop.wait(0.5):
            pass
    finally:
        chain.stop()
        print("chain stopped", flush=True)
    return 0


def _loadtest(args: argparse.Namespace) -> int:
    """Exit 0 when the run met the scenario's expectations, 1 when not, 2
    when the scenario or the addresses file is unusable."""
    import json

    from loadtest import report, scenario
    from loadtest.run import run

    log = logging.getLogger("adchain.loadtest")
    try:
        world = scenario.load(args.scenario)
        addresses = json.loads(args.addresses.read_text()) if args.addresses else None
    except (scenario.ScenarioError, FileNotFoundError, OSError, ValueError) as error:
        log.error("%s", error)
        return 2
    if args.scale <= 0:
        log.error("--scale must be positive")
        return 2
    if args.data and addresses is not None:
        log.error("--data is for the chain loadtest starts; a chain given by --addresses keeps its own")
        return 2
    result = run(world, scale=args.scale, seed=args.seed, addresses=addresses, max_duration_s=args.duration,
                 max_opportunities=args.max_opportunities, run_dir=args.run_dir, bulk=args.bulk,
                 data_dir=args.data)
    print(report.to_json(result) if args.json else report.table(result), flush=True)
    if args.html:
        args.html.write_text(report.to_html(result))
        if not args.json:
            print(f"HTML report written to {args.html}")
    return 0 if result["passed"] else 1


def _demo(args: argparse.Namespace) -> int:
    from loadtest import report, scenario
    from loadtest.run import run

    started = time.monotonic()
    world = scenario.load("seed-example")
    print(f"starting the chain and playing seed-example at scale {args.scale:g} "
          f"({round(world.traffic.opportunities * args.scale):,} opportunities)...", flush=True)
    result = run(world, scale=args.scale, seed=args.seed, run_dir=args.run_dir)
    print(report.table(result))
    print(f"\ndone in {time.monotonic() - started:.1f}s")
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    import json

    from services import reconcile

    if args.ledgers is not None:
        if not reconcile.ledger_files(args.ledgers):
            print(f"no ledger files (*.sqlite) in {args.ledgers}", file=sys.stderr)
            return 2
        result = reconcile.report(reconcile.ledger_snapshots(args.ledgers), reconcile.ledger_journals(args.ledgers))
    else:
        addresses = json.loads(args.addresses.read_text())
        result = reconcile.report(reconcile.read_snapshots(addresses), reconcile.online_journals(addresses))
    print(json.dumps(result, indent=2) if args.json else reconcile.format_report(result))
    return 0


def _print_addresses(chain) -> None:
    print(f"{'role':<10}{'gRPC':<22}metrics")
    for name, where in chain.addresses().items():
        if "grpc" not in where:
            continue  # the supervisor and prometheus, printed on their own
        print(f"{name:<10}{where['grpc']:<22}http://{where['metrics']}/metrics")
    print(f"{'supervisor':<10}{'':<22}http://{chain.supervisor_metrics}/metrics  (restarts per role)")


if __name__ == "__main__":
    raise SystemExit(main())
