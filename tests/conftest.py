import os
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402

from helpers import write_shards, write_tiny_model_config  # noqa: E402

BARE_PYTHON_MESSAGE = "bare python called: use $PYTHON / sys.executable"
SELF_TEST_ARG = "--dive-shim-self-test"  # tests/test_bare_python.py calls the shim on purpose with this
_SHIM = {}


def pytest_configure(config):
    """A bare `python` / `python3` from any test, script or launcher fails loudly: a shim is first on PATH for the
    whole session, and every call it gets fails the session at the end even if a script ignored the exit status.
    (CI passed once only because its machine had torch in the global Python; the venv's is sys.executable.)"""
    shim = tempfile.mkdtemp(prefix="dive-bare-python-")
    calls = os.path.join(shim, "calls.log")
    for name in ("python", "python3"):
        path = os.path.join(shim, name)
        with open(path, "w") as f:
            f.write(f"#!/bin/sh\necho \"{name} $*  (cwd $PWD)\" >> '{calls}'\n"
                    f"echo '{BARE_PYTHON_MESSAGE} (tests/conftest.py shim: {name} $*)' >&2\nexit 1\n")
        os.chmod(path, 0o755)
    _SHIM.update(dir=shim, calls=calls, path=os.environ.get("PATH", ""))
    os.environ["PATH"] = shim + os.pathsep + _SHIM["path"]


def pytest_sessionfinish(session, exitstatus):
    if not _SHIM:
        return
    os.environ["PATH"] = _SHIM["path"]
    calls = open(_SHIM["calls"]).read().splitlines() if os.path.exists(_SHIM["calls"]) else []
    calls = [c for c in calls if SELF_TEST_ARG not in c]
    shutil.rmtree(_SHIM.pop("dir"), ignore_errors=True)
    if calls:
        print(f"\n{BARE_PYTHON_MESSAGE}; {len(calls)} call(s) during the tests:", file=sys.stderr)
        for line in calls:
            print(f"  {line}", file=sys.stderr)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A tiny model config, class-labelled ID shards and caption reference shards, shared by the session."""
    root = tmp_path_factory.mktemp("tiny")
    config = write_tiny_model_config(str(root / "configs"))
    id_shards = write_shards(str(root / "id"), "id", num_shards=2, per_shard=16, num_classes=4, seed=1)
    ref_shards = write_shards(str(root / "ref"), "ref", num_shards=2, per_shard=16, with_cls=False, with_txt=True, seed=2)
    return {"root": root, "config": config, "id": id_shards, "ref": ref_shards,
            "classnames": str(root / "id" / "classnames.json")}
