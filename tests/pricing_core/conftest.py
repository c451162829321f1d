"""Test set-up for pricing_core: Numba's on-disk cache goes to a folder of this session's
own, set before anything imports numba, so tests never read or write a shared cache."""
import os
import shutil
import sys
import tempfile

_CACHE_DIR = tempfile.mkdtemp(prefix="pricing-core-numba-cache-")
os.environ["NUMBA_CACHE_DIR"] = _CACHE_DIR
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)
