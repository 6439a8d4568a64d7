"""The quickstart on tiny versions of the packaged model and data (a few steps); the mini benchmark: test_minibench.py."""

import json
import os

import pytest

from helpers import run_module, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def env():
    from open_clip_dive.default import datasets

    missing = datasets.check(stream=open(os.devnull, "w"))
    if missing and not os.environ.get("CI"):  # CI installs them: there a missing package is a failure
        pytest.skip(f"packaged data not installed ({', '.join(missing)}): bash scripts/install_default_data.sh")
    return subprocess_env()  # the tiny model and data are cached under the user's cache, in tiny/


def test_quickstart_runs_end_to_end(env, tmp_path):
    result = run_module("open_clip_dive.quickstart", ["--tiny", "--steps", "2", "--batch-size", "8",
                                                      "--output", tmp_path / "qs"], cwd=tmp_path, env=env, timeout=1100)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "qs" / "results" / "results.json").read_text())
    assert set(results["runs"]) == {"pretrained", "flyp", "dive"}
    table = (tmp_path / "qs" / "results" / "results.md").read_text()
    assert "| dive |" in table and "OOD avg" in table and "ZS avg" in table
    assert "open_clip_dive.main" in (tmp_path / "qs" / "commands.sh").read_text()
    assert list((tmp_path / "qs" / "results" / "plots").glob("*.png"))
    # the fine-tuned rows are the checkpoints' weights, not the pre-trained folder's
    geometry = results["runs"]["flyp"]["geometry"]["image"]
    assert geometry["diff_norm_mean"] > 0
    # the tiny data is cached per data version, like the full build (an unversioned cache of older code was read
    # as the current version's layout)
    from open_clip_dive.default.data import DATA_VERSION
    from open_clip_dive.default.datasets import cache_root
    assert os.path.isfile(os.path.join(cache_root(), "tiny", f"data-v{DATA_VERSION}", "BUILD.json"))
