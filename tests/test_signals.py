"""SIGTERM to the whole process group (what SLURM sends on preemption, at the time limit and on `scancel`):
the DataLoader workers must not die of it, so the main process finishes its step, checkpoints and exits 75,
and `--resume latest` ends with the weights of a run that was never interrupted."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import TINY_MODEL, dive_cli_argv, subprocess_env, write_shards
from open_clip_dive.signals import WorkerSignals, preempt_signals, protect_workers

pytestmark = pytest.mark.timeout(600)


def dive_argv(tiny_data, shards, logs, name, *extra):
    return dive_cli_argv(tiny_data, shards, logs, name, "--workers", "1", *extra)  # the workers get the signal too


def kill_group_when(argv, log, marker, signum=signal.SIGTERM, timeout=300):
    """Start `argv` in its own session, send `signum` to its whole process group once `marker` is logged."""
    proc = subprocess.Popen(argv, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline, sent = time.time() + timeout, False
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and marker in log.read_text():
            os.killpg(proc.pid, signum)
            sent = True
            break
        time.sleep(0.02)
    code = proc.wait(timeout=timeout)
    return code, proc.stderr.read(), sent


def test_sigterm_to_the_group_with_workers_checkpoints_and_resumes_exactly(tiny_data, tmp_path):
    shards = write_shards(str(tmp_path / "id"), "id", 2, 24, num_classes=4, seed=5)
    env = subprocess_env()
    full = subprocess.run(dive_argv(tiny_data, shards, tmp_path, "full"), env=env, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-2000:]

    code, err, sent = kill_group_when(dive_argv(tiny_data, shards, tmp_path, "cut"), tmp_path / "cut" / "out.log",
                                      "Train Epoch: 1 [ 8/")  # two steps into the second epoch
    assert sent and code == 75, err[-3000:]
    assert "is killed by signal" not in err
    saved = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").glob("*.pt"))
    mid = [n for n in saved if "_step_" in n]
    assert len(mid) == 1 and mid[0].startswith("epoch_1_step_"), saved

    resumed = subprocess.run(dive_argv(tiny_data, shards, tmp_path, "cut", "--resume", "latest"), env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "full" / "checkpoints" / "epoch_2.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "epoch_2.pt", weights_only=True)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert torch.equal(a["dive"]["ema"], b["dive"]["ema"])


def test_sigterm_to_the_group_with_open_clips_own_loader(tiny_data, tmp_path):
    """open_clip builds the loader of its own dataset types (here synthetic); its workers are protected too."""
    argv = [sys.executable, "-m", "open_clip_dive.main", "--dive-model-config", tiny_data["config"],
            "--model", TINY_MODEL, "--dataset-type", "synthetic", "--train-num-samples", "64", "--loss", "clip",
            "--batch-size", "4", "--epochs", "1", "--device", "cpu", "--precision", "fp32", "--workers", "2",
            "--logs", str(tmp_path), "--name", "syn", "--report-to", "none", "--log-every-n-steps", "1"]
    code, err, sent = kill_group_when(argv, tmp_path / "syn" / "out.log", "Train Epoch: 0 [ 8/")
    assert sent and code == 75, err[-3000:]
    assert list((tmp_path / "syn" / "checkpoints").glob("epoch_0_step_*.pt"))


def _iterate_then_signal(loader):
    """In a child process: start the loader's worker, SIGTERM the worker from outside, read on."""
    it = iter(loader)
    first = next(it)
    worker = it._workers[0].pid
    sender = subprocess.Popen([sys.executable, "-c", f"import os, signal; os.kill({worker}, signal.SIGTERM)"])
    sender.wait()
    time.sleep(0.5)
    rest = list(it)
    return [int(first)] + [int(x) for x in rest]


def test_a_protected_worker_ignores_an_outside_sigterm_and_still_shuts_down():
    loader = torch.utils.data.DataLoader(list(range(8)), batch_size=None, num_workers=1)
    protect_workers(loader, preempt_signals("USR1,TERM"))
    assert isinstance(loader.worker_init_fn, WorkerSignals)
    assert _iterate_then_signal(loader) == list(range(8))  # the worker survived and finished the pass
    # the main process's own shutdown (a SIGTERM from the parent) still ends a protected worker
    it = iter(loader)
    next(it)
    worker = it._workers[0]
    worker.terminate()
    worker.join(timeout=10)
    assert not worker.is_alive()


def test_an_unprotected_worker_dies_of_it():
    """The bug the plugin fixes: torch's worker handler dies of a SIGTERM that is not the main process's."""
    loader = torch.utils.data.DataLoader(list(range(8)), batch_size=None, num_workers=1)
    with pytest.raises(RuntimeError, match="killed by signal"):
        _iterate_then_signal(loader)


@pytest.mark.parametrize("spec, message", [("KILL", "SIGKILL cannot be caught"), ("STOP", "SIGSTOP cannot be caught"),
                                           ("TERM,FOO", "unknown signal 'FOO'")])
def test_uncatchable_or_unknown_preempt_signals_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        preempt_signals(spec)


def _csv(root, n=32):
    """open_clip's csv data (image paths + captions): its loader shuffles with the global torch RNG."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    lines = ["filepath\ttitle"]
    for i in range(n):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        lines.append(f"{path}\ta picture of thing {i % 5}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return str(root / "train.csv")


def test_csv_data_with_a_reference_loss_resumes_mid_epoch_exactly(tiny_data, tmp_path):
    """The csv shuffle is drawn from the global RNG when the epoch's loader iterator is made: a resume redraws it
    from the RNG state the checkpoint kept for the epoch's start (it used to shift: max diff 2.9e-3)."""
    csv = _csv(tmp_path)

    def argv(name, *extra):
        return [sys.executable, "-m", "open_clip_dive.main", "--dive-model-config", tiny_data["config"],
                "--model", TINY_MODEL, "--train-data", csv, "--dataset-type", "csv", "--batch-size", "4",
                "--epochs", "2", "--device", "cpu", "--precision", "fp32", "--workers", "0", "--lr", "1e-3",
                "--warmup", "2", "--logs", str(tmp_path), "--name", name, "--report-to", "none",
                "--log-every-n-steps", "1", "--seed", "0", "--loss", "dive", "--dive-ref-data", tiny_data["ref"],
                "--dive-avl-weight", "10", "--dive-pvl-weight", "10", *extra]

    env = subprocess_env()
    full = subprocess.run(argv("full"), env=env, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-2000:]
    code, err, sent = kill_group_when(argv("cut"), tmp_path / "cut" / "out.log", "Train Epoch: 1 [12/",
                                      signum=signal.SIGUSR1)
    assert sent and code == 75, err[-3000:]
    resumed = subprocess.run(argv("cut", "--resume", "latest"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "full" / "checkpoints" / "epoch_2.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "epoch_2.pt", weights_only=True)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


def test_resuming_a_mid_epoch_checkpoint_with_another_batch_size_is_refused(tiny_data, tmp_path):
    """It used to skip the rest of the epoch silently (the step count meant steps of the old batch size)."""
    shards = tiny_data["id"]
    code, err, sent = kill_group_when(dive_argv(tiny_data, shards, tmp_path, "bs", "--workers", "0"),
                                      tmp_path / "bs" / "out.log", "Train Epoch: 0 [ 8/", signum=signal.SIGUSR1)
    assert sent and code == 75, err[-3000:]
    resumed = subprocess.run(dive_argv(tiny_data, shards, tmp_path, "bs", "--workers", "0", "--resume", "latest",
                                       "--batch-size", "8"), env=subprocess_env(), capture_output=True, text=True)
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    assert ("open_clip_dive: error: --resume: the mid-epoch checkpoint counts steps of --batch-size 4 (now 8); "
            "resume with the same values") in resumed.stderr


def test_a_signal_during_startup_is_not_fatal(tiny_data, tmp_path):
    """Before the run's handlers exist (imports, model building) SIGUSR1 used to kill the run (status -10)."""
    proc = subprocess.Popen(dive_argv(tiny_data, tiny_data["id"], tmp_path, "early", "--workers", "0"),
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # still importing torch (it takes seconds)
    proc.send_signal(signal.SIGUSR1)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 75, err[-3000:]
    assert [p.name for p in (tmp_path / "early" / "checkpoints").glob("*.pt")] == ["epoch_0_step_1.pt"]


def test_caption_webdataset_without_classnames_resumes_mid_epoch_exactly(tiny_data, tmp_path):
    """open_clip's own caption pipeline shuffled with an RNG seeded by pid and time (two uninterrupted runs
    differed by up to 1.3e-2); the plugin swaps in its seeded shuffle, so runs repeat and resumes are exact."""
    captions = write_shards(str(tmp_path / "cap"), "cap", 2, 16, with_cls=False, with_txt=True, seed=7)

    def argv(name, *extra):
        return [sys.executable, "-m", "open_clip_dive.main", "--dive-model-config", tiny_data["config"],
                "--model", TINY_MODEL, "--train-data", captions, "--dataset-type", "webdataset",
                "--train-num-samples", "32", "--batch-size", "4", "--epochs", "2", "--device", "cpu",
                "--precision", "fp32", "--workers", "1", "--lr", "1e-3", "--warmup", "2", "--logs", str(tmp_path),
                "--name", name, "--report-to", "none", "--log-every-n-steps", "1", "--seed", "0", "--loss", "dive",
                "--dive-ref-data", tiny_data["ref"], "--dive-avl-weight", "10", "--dive-pvl-weight", "10", *extra]

    env = subprocess_env()
    full = subprocess.run(argv("full"), env=env, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-2000:]
    code, err, sent = kill_group_when(argv("cut"), tmp_path / "cut" / "out.log", "Train Epoch: 1 [12/")
    assert sent and code == 75, err[-3000:]
    resumed = subprocess.run(argv("cut", "--resume", "latest"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "full" / "checkpoints" / "epoch_2.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "epoch_2.pt", weights_only=True)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


def test_logs_none_preemption_says_no_checkpoint_was_written(tiny_data, tmp_path):
    """With --logs none nothing is saved: the exit line used to name a checkpoint path that was never written."""
    argv = dive_argv(tiny_data, tiny_data["id"], tmp_path, "nologs", "--workers", "0", "--logs", "none")
    proc = subprocess.Popen(argv, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path)
    time.sleep(1.0)
    proc.send_signal(signal.SIGUSR1)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 75, out[-3000:]
    assert "preempted: no checkpoint written (--logs none)" in out
    assert "checkpoint written to" not in out and not list(tmp_path.rglob("*.pt"))
