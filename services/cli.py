"""The `adchain` command.

    adchain serve ROLE --config FILE     serve one role (dsp, ssp, adserver, verifier)
    adchain up [--addresses FILE] [--prometheus]
                                         the whole chain as local processes
    adchain demo                         the chain, a short load, the counts per stage
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

    demo = commands.add_parser("demo", help="start the chain, drive a short load, print the counts per stage")
    demo.add_argument("--opportunities", type=int, default=3000, help="ad requests to send (default 3000)")
    demo.add_argument("--seed", type=int, default=7)
    _chain_options(demo)

    reconcile = commands.add_parser("reconcile", help="read every role's counts and attribute every gap to a cause")
    reconcile.add_argument("--addresses", type=Path, required=True, help="the file `adchain up --addresses` wrote")
    reconcile.add_argument("--json", action="store_true", help="print one JSON object")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    args.started = started
    return {"serve": _serve, "up": _up, "demo": _demo, "reconcile": _reconcile}[args.command](args)


def _chain_options(parser: argparse.ArgumentParser) -> None:
    from services.local.chain import DEFAULTS

    parser.add_argument("--config-dir", type=Path, default=DEFAULTS,
                        help="folder with dsp-1.toml, dsp-2.toml, ssp.toml, adserver.toml, verifier.toml")
    parser.add_argument("--run-dir", type=Path, help="where configs and logs of the processes go (default: a temp dir)")


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
    chain = local_chain.start(args.config_dir, args.run_dir, prometheus=args.prometheus)
    try:
        _print_addresses(chain)
        if chain.prometheus is not None:
            print(f"prometheus {chain.prometheus.url}  (dashboard: deploy/grafana/adchain.json)")
        elif args.prometheus:
            print("prometheus is not installed (not on PATH); the chain runs without it", file=sys.stderr)
        if args.addresses:
            chain.write_addresses(args.addresses)
            print(f"addresses written to {args.addresses}")
        print(f"logs in {chain.run_dir}; Ctrl-C stops the chain", flush=True)
        while not stop.is_set():
            for process in chain.processes.values():
                if process.popen.poll() is not None:
                    print(f"{process.name} exited with {process.popen.returncode}; stopping the chain", file=sys.stderr)
                    stop.set()
            stop.wait(0.5)
    finally:
        chain.stop()
        print("chain stopped", flush=True)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from loadtest import demo
    from services import reconcile
    from services.local import chain as local_chain

    started = time.monotonic()
    chain = local_chain.start(args.config_dir, args.run_dir)
    try:
        _print_addresses(chain)
        print(f"\ndriving {args.opportunities:,} ad opportunities through the chain...", flush=True)
        done = demo.run(chain.addresses(), args.opportunities, seed=args.seed)
        time.sleep(0.5)  # let win notices in flight land before reading counts
        counts = reconcile.chain_counts(reconcile.read_snapshots(chain.addresses()))
        print(f"client: {done['requested']:,} requested, {done['filled']:,} filled, {done['rendered']:,} rendered, "
              f"{done['exposed']:,} reported by the verification tag\n")
        print("counts read from the services:")
        print(reconcile.format_stage_table(counts))
    finally:
        chain.stop()
    print(f"\ndone in {time.monotonic() - started:.1f}s")
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    import json

    from services import reconcile

    addresses = json.loads(args.addresses.read_text())
    result = reconcile.report(reconcile.read_snapshots(addresses), reconcile.read_journals(addresses))
    print(json.dumps(result, indent=2) if args.json else reconcile.format_report(result))
    return 0


def _print_addresses(chain) -> None:
    print(f"{'role':<10}{'gRPC':<22}metrics")
    for name, where in chain.addresses().items():
        if "grpc" not in where:
            continue  # prometheus, printed on its own
        print(f"{name:<10}{where['grpc']:<22}http://{where['metrics']}/metrics")


if __name__ == "__main__":
    raise SystemExit(main())
