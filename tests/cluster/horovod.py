"""The `horovod_built` fixture: Horovod 0.28.1 importable in this interpreter (scripts/build_horovod.sh).

When `import horovod.torch` fails, the fixture runs the build script (the cached wheel under .cache/wheels makes
that seconds; a first build takes ~6 min).  If Horovod still cannot be had, the tests are skipped, or fail when
DIVE_REQUIRE_HOROVOD=1 (CI).  DIVE_BUILD_HOROVOD=0 skips the build attempt.
"""

import os
import subprocess
import sys

import pytest

from .common import SCRIPTS


def horovod_importable():
    probe = subprocess.run([sys.executable, "-c", "import horovod.torch"], capture_output=True, text=True,
                           cwd="/", timeout=120)
    return probe.returncode == 0, probe.stderr.strip().splitlines()[-1:] or [""]


def _unavailable(reason):
    if os.environ.get("DIVE_REQUIRE_HOROVOD") == "1":
        pytest.fail(f"Horovod is required (DIVE_REQUIRE_HOROVOD=1) but unavailable: {reason}")
    pytest.skip(f"Horovod unavailable: {reason}")


@pytest.fixture(scope="session")
def horovod_built():
    ok, why = horovod_importable()
    if ok:
        return True
    if os.environ.get("DIVE_BUILD_HOROVOD", "1") == "0":
        _unavailable(f"import horovod.torch failed ({why[0]}) and DIVE_BUILD_HOROVOD=0")
    build = subprocess.run(["bash", os.path.join(SCRIPTS, "build_horovod.sh"), "--python", sys.executable],
                           capture_output=True, text=True, timeout=1800)
    if build.returncode != 0:
        _unavailable(f"scripts/build_horovod.sh failed: {build.stderr.strip()[-2000:]}")
    ok, why = horovod_importable()
    if not ok:
        _unavailable(f"built, but import horovod.torch fails: {why[0]}")
    return True
