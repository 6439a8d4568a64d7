"""Smoke tests of benchmarks/: every script runs with the tiniest settings and prints its tables.

Only the shape of the output is checked (rows and columns), never a timing.
gpu.sh runs step_time.py (timing + memory probes) and data_throughput.py (with the step-time JSON), on CPU;
gpu_session.sh runs gpu_check.py, whose numbers are checked (CPU against CPU: exact; bf16: measured).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import REPO, subprocess_env

BENCH = os.path.join(REPO, "benchmarks")
sys.path.insert(0, BENCH)

import gpu_check  # noqa: E402
from _common import parse_markdown_table  # noqa: E402
from data_throughput import THROUGHPUT_HEADERS, WORKER_HEADERS  # noqa: E402
from plugin_overhead import HEADERS as OVERHEAD_HEADERS, LOOP_HEADERS  # noqa: E402
from step_time import MEM_HEADERS, TIME_HEADERS  # noqa: E402


def _number(cell):
    return float(cell.rstrip("%"))


def test_gpu_script_dry_run_on_cpu_prints_step_memory_and_data_tables(tmp_path):
    out = tmp_path / "gpu.md"
    env = subprocess_env(PYTHON=sys.executable, DEVICE="cpu", MODEL="tiny", BATCH="4", ROUNDS="1", STEPS="1", PRECISIONS="fp32",
                         FRACTIONS="0.5,1", STEP_ARGS="--memory-fractions 0.5 --no-memory-checkpointing --clock cpu",
                         DATA_SAMPLES="24", DATA_BATCH="8", WORKERS="0", TOTAL_S="400")
    result = subprocess.run(["bash", os.path.join(BENCH, "gpu.sh"), str(out)], env=env, capture_output=True,
                            text=True, timeout=400, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    text = out.read_text()

    headers, rows = parse_markdown_table(text, "model")
    assert headers == TIME_HEADERS, text
    assert [(r["B"], r["B'"]) for r in rows] == [("4", "2"), ("4", "4")]
    for r in rows:
        assert r["precision"] == "fp32" and r["frozen"] == "fp32"
        assert _number(r["FLYP ms"]) > 0 and _number(r["DiVE ms"]) > 0
        assert _number(r["(B+B')/B"]) == pytest.approx(1 + int(r["B'"]) / 4)
        assert _number(r["(B+B'+cB')/B"]) >= _number(r["(B+B')/B"])
    assert rows[0]["mem DiVE/FLYP"] != "-"  # B' = B/2 was probed

    mem_section = text[text.index("Peak memory"):]
    headers, mem = parse_markdown_table(mem_section, "model")
    assert headers == MEM_HEADERS
    assert [(r["config"], r["B'"]) for r in mem] == [("FLYP", "-"), ("DiVE", "2"), ("DiVE + cache", "2")]
    assert all(_number(r["peak MiB"]) > 0 for r in mem)

    data_section = text[text.index("## Data pipeline"):]
    headers, data = parse_markdown_table(data_section, "stream")
    assert headers == THROUGHPUT_HEADERS
    assert [r["stream"] for r in data] == ["ID (class prompts)", "reference (captions)"]
    assert all(_number(r["per worker"]) > 0 for r in data)
    headers, workers = parse_markdown_table(data_section, "model")
    assert headers == WORKER_HEADERS
    assert len(workers) == 2 and all(int(r["--workers"]) >= 1 for r in workers)


def test_plugin_overhead_compares_both_trainers(tmp_path, capsys, monkeypatch):
    import plugin_overhead
    import torch

    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    try:  # in this process (the trainers are subprocesses): saves one interpreter start
        assert plugin_overhead.main(["--model", "tiny", "--batch-size", "4", "--steps", "3", "--skip", "1",
                                     "--pairs", "1", "--loop-turns", "1", "--loop-steps", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    stdout = capsys.readouterr().out
    headers, rows = parse_markdown_table(stdout, "trainer")
    assert headers == OVERHEAD_HEADERS
    assert [r["trainer"] for r in rows] == ["open_clip_train.main", "open_clip_dive.main --loss flyp"]
    assert all(r["steps timed"] == "2" and _number(r["step ms (median)"]) > 0 for r in rows)
    assert "step time ratio plugin/open_clip:" in stdout
    headers, loops = parse_markdown_table(stdout, "loop")
    assert headers == LOOP_HEADERS
    assert [r["loop"] for r in loops] == ["open_clip_train.train.train_one_epoch",
                                          "open_clip_dive.train.train_one_epoch"]
    assert "loop step ratio plugin/open_clip:" in stdout


@pytest.mark.slow
def test_gpu_session_dry_run_on_cpu_passes_every_correctness_check(tmp_path):
    """benchmarks/gpu_session.sh's check phase, DEVICE=cpu: gpu_check.py --quick, every section, every loss; and
    the h200.md it assembles."""
    out = tmp_path / "out"
    env = subprocess_env(DEVICE="cpu", QUICK="1", PHASES="check", PYTHON=sys.executable, SESSION_S="400")
    result = subprocess.run(["bash", os.path.join(BENCH, "gpu_session.sh"), str(out)], env=env, capture_output=True,
                            text=True, timeout=400, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads((out / "gpu_check.json").read_text())["rows"]
    assert [r for r in rows if r["result"] in ("FAIL", "SKIP")] == []
    by_section = {}
    for r in rows:
        by_section.setdefault(r["section"], []).append(r)
    assert set(by_section) == {"loss", "ema", "rng", "step", "placement", "train", "cache"}
    precisions = ["amp_bf16 (cpu)", "fp32", "amp_bf16"]  # the CPU's own bf16 error, then the device's two rows
    assert [(r["case"], r["precision"]) for r in by_section["loss"]] == [(n, p) for n in gpu_check.default_losses()
                                                                         for p in precisions]
    assert [(r["case"], r["precision"]) for r in by_section["step"]] == [(n, p) for n in ("dive", "flyp")
                                                                         for p in precisions]  # --quick
    assert [(r["case"], r["precision"]) for r in by_section["placement"]] == [
        (n, f"fp32 ({d})") for d in ("cpu", "meta") for n in ("dive", "flyp")]
    for r in by_section["loss"] + by_section["step"] + by_section["ema"] + by_section["cache"]:
        errors = [v for v in r["errors"].values() if v is not None]
        if r["precision"] == "fp32":  # the same device twice: identical
            assert errors and all(v == 0 for v in errors), r
        else:  # bf16 autocast against fp32: an error that is there, and small
            assert errors and all(0 <= v < 0.5 for v in errors) and max(errors) > 0, r
            assert r["result"] == ("MEASURED" if r["precision"] == "amp_bf16 (cpu)" else "PASS"), r
    dive = [r for r in by_section["step"] if r["case"] == "dive"]
    assert dive[2]["bound"] == "2x cpu bf16" and dive[2]["errors"] == dive[0]["errors"]
    assert [r["result"] for r in by_section["train"]] == ["PASS", "PASS"]
    assert "--resume latest" in by_section["train"][1]["case"] and "total 6 of 6" in \
        by_section["train"][1]["note"]
    h200 = (out / "h200.md").read_text()
    assert "## Machine" in h200 and "## 1. CUDA correctness" in h200 and "## Session" in h200
    headers, table = parse_markdown_table(h200[h200.index("## 1. CUDA"):], "section")
    assert headers == gpu_check.HEADERS and len(table) == len(rows)


def test_every_state_tensor_follows_the_training_device():
    """Two TrainingSteps on `meta` (where an op mixing in a CPU tensor fails as on CUDA) leave every tensor of the
    model, the optimizer, each registry loss and the frozen model on that device: the CUDA placement check's
    counterpart on a CPU."""
    from open_clip_dive.losses import list_losses

    models = gpu_check.tiny_models(0)
    # every loss but the classification-head family, which gpu_check does not feed yet (named, not hidden)
    assert sorted(set(list_losses()) - set(gpu_check.default_losses())) == ["car-ft", "ce", "lipsum", "lp-ft"]
    for name in gpu_check.default_losses():
        assert gpu_check.placement_problems("meta", name, models) == [], name


def test_placement_check_catches_a_tensor_the_loss_keeps_off_the_device():
    """The check can fail: a loss that keeps a plain tensor attribute (not a buffer, so `.to()` leaves it on the
    CPU) is caught, both when it uses it (the step fails on meta as on CUDA) and when it only carries it."""
    from open_clip_dive.losses import DiVELoss, contrastive_loss

    class CentredDiVE(DiVELoss):
        def __init__(self, args, use):
            super().__init__(contrastive_loss(args), avl_weight=1.0, pvl_weight=1.0)
            self.centre, self.use = torch.zeros(gpu_check.DIM), use  # should be register_buffer

        def forward(self, ref_image_features, **kwargs):
            if self.use:
                ref_image_features = ref_image_features - self.centre
            return super().forward(ref_image_features=ref_image_features, **kwargs)

    models = gpu_check.tiny_models(0)
    used = gpu_check.placement_problems("meta", "dive", models, factory=lambda a: CentredDiVE(a, True))
    assert len(used) == 1 and used[0].startswith("step failed") and "device" in used[0], used
    carried = gpu_check.placement_problems("meta", "dive", models, factory=lambda a: CentredDiVE(a, False))
    assert carried == ["loss:centre on cpu"], carried


def test_minibench_cost_gives_back_the_committed_record_at_its_own_steps():
    """The estimator's split of every job (start-up, steps, in-training evaluation) adds up to the record: at the
    record's own steps and pipeline (zero-shot dev after every epoch or after the last only, as its logs say) it
    returns the record's own job time."""
    import glob

    from minibench_cost import split_log
    from open_clip_dive.bench.runner import read_sittings

    work = os.path.join(REPO, "docs", "results", "work")
    ledger = [json.loads(x) for x in open(os.path.join(work, "ledger.jsonl"))]
    wall = sum(s["wall_s"] for s in read_sittings(work))

    def estimate(*flags):
        out = subprocess.run([sys.executable, os.path.join(BENCH, "minibench_cost.py"), "--work-dir", work, *flags],
                             capture_output=True, text=True, env=subprocess_env(), cwd=REPO, check=True).stdout
        job_min, wall_min = out.strip().splitlines()[-1].split(": ")[1].split(", ")
        return float(job_min.split()[0]), float(wall_min.split()[0])

    steps = json.load(open(os.path.join(REPO, "docs", "results", "run.json")))["recipe"]["steps"]  # per task
    own = ",".join([str(min(steps.values()))] + [f"{t}={n}" for t, n in steps.items()])
    zs_epochs = {split_log(log)[-1] for log in glob.glob(os.path.join(work, "*", "runs", "*", "out.log"))}
    assert zs_epochs in ({1}, {4}), zs_epochs  # every run of a record scored zero-shot dev equally often
    every = ["--zeroshot-every-epoch"]
    record_flags, other_flags = (every, []) if zs_epochs == {4} else ([], every)
    job_min = sum(j["seconds"] for j in ledger) / 60
    assert estimate("--steps", own, *record_flags) == (round(job_min, 1), round(wall / 60, 1))
    other = estimate("--steps", own, *other_flags)[0]
    assert (other < job_min) if record_flags else (other > job_min)  # zero-shot dev once against every epoch
    doubled = ",".join([str(2 * max(steps.values()))] + [f"{t}={2 * n}" for t, n in steps.items()])
    assert job_min < estimate("--steps", doubled, *record_flags)[0]
    # twice the steps at twice the speed: the steps cost what they did, nothing else changes
    assert estimate("--steps", doubled, "--step-speedup", "2")[0] == pytest.approx(estimate("--steps", own)[0], abs=0.1)


def _flyp_probe(work, task, steps, curves):
    """A finished FLYP run per seed as a mini benchmark sitting leaves it: params.txt and the in-training
    evaluation of every epoch."""
    for seed, curve in curves.items():
        run = work / task / "runs" / f"flyp-s{seed}"
        run.mkdir(parents=True)
        (run / "params.txt").write_text(f"batch_size: 16\nepochs: {len(curve)}\n"
                                        f"train_num_samples: {steps // len(curve) * 16}\n")
        for e, acc in enumerate(curve, 1):
            (run / "dive_eval" / f"epoch_{e}").mkdir(parents=True)
            (run / "dive_eval" / f"epoch_{e}" / "results.json").write_text(
                json.dumps({"runs": {f"epoch_{e}": {"summary": {"id": acc / 100}}}}))


def test_run_length_reads_the_last_epoch_gain_and_the_gain_of_a_doubled_run_paired_by_seed(tmp_path):
    import run_length

    _flyp_probe(tmp_path / "a", "digits", 80, {0: [80, 90, 92, 94], 1: [80, 88, 91, 92], 2: [81, 89, 91, 93]})
    _flyp_probe(tmp_path / "b", "digits", 160, {0: [90, 94, 95, 95.5], 1: [89, 92, 94, 94.5], 2: [90, 93, 95, 95.5]})
    _flyp_probe(tmp_path / "b", "digits-unfinished", 160, {0: [90, 94]})  # epochs 3, 4 missing: left out
    (tmp_path / "b" / "digits-unfinished" / "runs" / "flyp-s0" / "params.txt").write_text(
        "batch_size: 16\nepochs: 4\ntrain_num_samples: 640\n")
    table = run_length.rows(run_length.flyp_curves([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert [(r["task"], r["steps"], r["seeds"]) for r in table] == [("digits", 80, [0, 1, 2]), ("digits", 160, [0, 1, 2])]
    short, long = table
    assert short["last_gain"][0] == pytest.approx(5 / 3) and short["doubling"] is None
    assert short["last_verdict"] == "cannot tell"  # 1.67 ± 0.33: above 1 point, not by 2 SE
    assert long["last_gain"][0] == pytest.approx(0.5) and long["last_verdict"] == "holds"  # 0.5 ± 0: inside 1
    d = long["doubling"]
    assert d["from"] == 80 and d["gain"][0] == pytest.approx((1.5 + 2.5 + 2.5) / 3) and d["gain"][2] == 3
    assert d["verdict"] == "does not hold"  # +2.17 ± 0.33: a doubled run still gains
    out = subprocess.run([sys.executable, os.path.join(BENCH, "run_length.py"), str(tmp_path / "a"),
                          str(tmp_path / "b")], capture_output=True, text=True, env=subprocess_env(), check=True).stdout
    assert "| digits | 160 | 3 | 89.7 ± 0.3 → " in out and "2.2 ± 0.3 (vs 80, 3 paired) | does not hold |" in out
    bad = subprocess.run([sys.executable, os.path.join(BENCH, "run_length.py"), str(tmp_path / "nowhere")],
                         capture_output=True, text=True, env=subprocess_env())
    assert bad.returncode == 2 and "nowhere: no such work dir" in bad.stderr and "Traceback" not in bad.stderr
