"""The generated stubs on disk are exactly what the protos produce, and the
protos pass buf's STANDARD lint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, system_program

sys.path.insert(0, str(ROOT / "scripts"))
import genproto  # noqa: E402


def test_generated_code_matches_the_protos(tmp_path: Path):
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in genproto.generate(tmp_path)}
    on_disk = {p.relative_to(ROOT): p.read_bytes()
               for p in (ROOT / "adchain").rglob("*") if p.is_file() and p.suffix in (".py", ".pyi")}
    assert sorted(on_disk) == sorted(fresh), "generated files differ from the protos: run `make gen`"
    stale = [str(name) for name in fresh if fresh[name] != on_disk[name]]
    assert not stale, f"stale generated code: {stale}; run `make gen`"


def test_protos_pass_buf_standard_lint():
    buf = system_program("buf")
    result = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
