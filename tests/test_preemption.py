"""SIGUSR1/SIGTERM: finish the step, checkpoint atomically, exit 75; `--resume latest` continues mid-epoch
and ends with the same weights as a run that was never interrupted (CPU, --workers 0, deterministic)."""

import signal
import subprocess
import time

import pytest
import torch

from helpers import dive_cli_argv, subprocess_env, write_shards
from open_clip_dive.checkpoint import atomic_save, latest_checkpoint

pytestmark = pytest.mark.timeout(600)


argv = dive_cli_argv


def test_signal_checkpoints_mid_epoch_and_resume_matches_uninterrupted_run(tiny_data, tmp_path):
    shards = write_shards(str(tmp_path / "id"), "id", 2, 24, num_classes=4, seed=5)
    env = subprocess_env()
    full = subprocess.run(argv(tiny_data, shards, tmp_path, "full"), env=env, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-2000:]

    log = tmp_path / "cut" / "out.log"
    proc = subprocess.Popen(argv(tiny_data, shards, tmp_path, "cut"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and "Train Epoch: 1 [ 8/" in log.read_text():  # two steps into the second epoch
            proc.send_signal(signal.SIGUSR1)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=300) == 75, proc.stderr.read()[-2000:]
    saved = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").glob("*.pt"))
    mid = [n for n in saved if "_step_" in n]
    assert len(mid) == 1 and mid[0].startswith("epoch_1_step_"), saved
    assert not list((tmp_path / "cut" / "checkpoints").glob("*.partial"))
    checkpoint = torch.load(tmp_path / "cut" / "checkpoints" / mid[0], weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["dive"]["step_in_epoch"] >= 2

    resumed = subprocess.run(argv(tiny_data, shards, tmp_path, "cut", "--resume", "latest"), env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "full" / "checkpoints" / "epoch_2.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "epoch_2.pt", weights_only=True)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert torch.equal(a["dive"]["ema"], b["dive"]["ema"])


def test_a_half_written_checkpoint_is_never_picked_as_latest(tmp_path):
    good = tmp_path / "epoch_1.pt"
    atomic_save({"epoch": 1}, str(good))
    (tmp_path / "epoch_2.pt").write_bytes(good.read_bytes()[:40])  # a kill during a plain torch.save
    (tmp_path / "epoch_3.pt.partial").write_bytes(b"half")  # a kill during the plugin's atomic save
    (tmp_path / "tmp.pt").write_bytes(good.read_bytes())  # open_clip's --save-most-recent temp file
    assert latest_checkpoint(str(tmp_path)) == str(good)
    atomic_save({"epoch": 1}, str(tmp_path / "epoch_1_step_7.pt"))
    assert latest_checkpoint(str(tmp_path)).endswith("epoch_1_step_7.pt")
    atomic_save({"epoch": 2}, str(tmp_path / "epoch_10.pt"))
    assert latest_checkpoint(str(tmp_path)).endswith("epoch_10.pt")  # natural order, not string order


def test_a_checkpoint_carries_the_current_gpus_generator(monkeypatch, tmp_path):
    """On a GPU the RNG state also holds the current device's generator (dropout and patch dropout on CUDA tensors
    draw from it), so a resumed run draws the same. No GPU here: torch.cuda's four calls are stand-ins; the real
    round trip is the `rng` row of benchmarks/gpu_check.py on the GPU."""
    from open_clip_dive import checkpoint as ckpt

    generator = {"state": torch.arange(16, dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: generator["state"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state: generator.update(state=state))
    atomic_save(ckpt.rng_state(), str(tmp_path / "rng.pt"))
    generator["state"] = torch.zeros(16, dtype=torch.uint8)  # the generator moved on
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(generator["state"], torch.arange(16, dtype=torch.uint8))

    monkeypatch.undo()  # this CPU machine: no GPU generator saved, and a GPU checkpoint resumes here without it
    state = ckpt.rng_state()
    assert "cuda" not in state
    ckpt.set_rng_state(dict(state, cuda=torch.zeros(16, dtype=torch.uint8)))
