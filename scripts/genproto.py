"""Generate the Python protobuf and gRPC stubs from protos/ into adchain/v1/.

The generated package is never committed: `make` regenerates it whenever a
.proto is newer, and tests/protos/test_generated.py fails when what is on disk
differs from what the protos produce, so stale stubs cannot slip in.

    python scripts/genproto.py [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "adchain" / "v1").glob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Run protoc for every proto; returns the files written under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    # grpc_tools ships the well-known types (google/protobuf/struct.proto).
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(p) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package = out / "adchain"
    for folder in (package, package / "v1"):
        (folder / "__init__.py").write_text('"""Generated from protos/ by scripts/genproto.py; do not edit."""\n')
    return sorted(p for p in package.rglob("*") if p.is_file() and p.suffix in (".py", ".pyi"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: repository root)")
    args = parser.parse_args(argv)
    written = generate(args.out)
    print(f"generated {len(written)} files under {args.out / 'adchain'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
