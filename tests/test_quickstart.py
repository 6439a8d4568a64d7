"""The quickstart and the mini benchmark on tiny versions of the packaged model and data (a few steps)."""

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


def test_minibench_runs_every_method(env, tmp_path):
    argv = ["--tiny", "--steps", "2", "--batch-size", "8", "--select-weights", "10,100", "--max-extensions", "1",
            "--paper-weight", "100", "--wise-ft", "0,0.5,1", "--output", tmp_path / "res", "--work-dir", tmp_path / "w"]
    result = run_module("open_clip_dive.minibench", argv, cwd=tmp_path, env=env, timeout=1100)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "res" / "results.json").read_text())
    assert set(results["runs"]) == {"pretrained", "flyp", "avl", "pvl", "dive", "snd", "replay",
                                    "dive-paper-sum", "dive-paper-mean"}
    run = json.loads((tmp_path / "res" / "run.json").read_text())
    # the best of {10, 100} is at an end of the grid either way: one half-decade is added on that side
    assert len(run["grid_extensions"]) == 1 and run["grid_extensions"][0] in (3.16, 316.0)
    assert set(run["selection"]) == {"10", "100", f"{run['grid_extensions'][0]:g}"}
    assert "validation" in run["criterion"]
    # three selection runs + five methods + the paper's weight under `mean` (under `sum` it is a selection run)
    commands = (tmp_path / "res" / "commands.sh").read_text()
    assert commands.count("open_clip_dive.main") == 3 + 5 + 1
    assert commands.count("--dive-reduction mean") == 1

    # a rerun reuses every finished run and evaluation: nothing is trained or evaluated again
    for log in (tmp_path / "w").glob("*.log"):
        log.unlink()
    result = run_module("open_clip_dive.minibench", argv, cwd=tmp_path, env=env, timeout=1100)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not list((tmp_path / "w").glob("*.log"))
    assert (tmp_path / "res" / "commands.sh").read_text() == commands


def test_every_method_trains_with_the_same_batchnorm_mode():
    """A comparison of losses must not also compare BatchNorm modes: --dive-bn-eval defaults to on only for the
    frozen-model losses, so FLYP and replay once re-estimated the statistics on ID batches and lost 37 OOD points."""
    from open_clip_dive.experiment import Recipe, train_command
    from open_clip_dive.minibench import METHODS

    data = {"id_train": "id.tar", "classnames": "c.json", "templates": "t.json", "reference": "ref.tar"}
    for method in METHODS:
        cmd = train_command("model", data, "out", method, method, Recipe(), 1.0, 1.0)
        assert "--dive-bn-eval" in cmd and "--no-dive-bn-eval" not in cmd, method
        # and the same dropout mode: --dive-deterministic is on by default for the frozen-model losses only
        assert "--dive-deterministic" in cmd and "--no-dive-deterministic" not in cmd, method
