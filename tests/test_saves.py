"""Saves that fail (a full disk) and numbers that are not finite never cost the last good checkpoint:
the partial file is removed, the line says 'no space left on <dir>', stale partial files are cleaned on the next
start, and a diverged loss stops the run naming the step and the term, without writing its weights."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import TINY_MODEL, subprocess_env
from open_clip_dive.checkpoint import PARTIAL_SUFFIX, atomic_save
from open_clip_dive.errors import DiveRunError

pytestmark = pytest.mark.timeout(600)


def argv(tiny_data, logs, name, *extra, epochs=2):
    return [sys.executable, "-m", "open_clip_dive.main", "--dive-model-config", tiny_data["config"],
            "--model", TINY_MODEL, "--train-data", tiny_data["id"], "--classnames", tiny_data["classnames"],
            "--batch-size", "4", "--epochs", str(epochs), "--device", "cpu", "--precision", "fp32", "--workers", "0",
            "--lr", "1e-3", "--warmup", "1", "--logs", str(logs), "--name", name, "--report-to", "none",
            "--log-every-n-steps", "1", "--seed", "0", "--loss", "flyp", *extra]


def last_line(text):
    """The plugin's last line (torch may log its own exit statistics after it)."""
    lines = [line for line in text.splitlines() if line.startswith("open_clip_dive: ")]
    return lines[-1] if lines else ""


def test_a_failed_write_removes_its_partial_and_keeps_the_previous_file(tmp_path):
    path = tmp_path / "epoch_1.pt"
    atomic_save({"epoch": 1}, str(path))
    before = path.read_bytes()

    def full_disk(obj, where):  # a writer that fills the disk: the partial file exists, then ENOSPC
        with open(where, "wb") as f:
            f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiveRunError, match=f"no space left on {tmp_path}: could not write {path}"):
        atomic_save({"epoch": 2}, str(path), save=full_disk)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(f"*{PARTIAL_SUFFIX}"))


@pytest.fixture
def small_disk(tmp_path):
    """A real full disk: a tmpfs of 60 MB (one tiny-model checkpoint is ~38 MB). Needs root (mount)."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=60m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_full_disk_at_the_epoch_checkpoint(tiny_data, small_disk):
    env = subprocess_env()
    done = subprocess.run(argv(tiny_data, small_disk, "full"), env=env, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr[-3000:]
    line = last_line(done.stderr)
    checkpoints = small_disk / "full" / "checkpoints"
    assert line == (f"open_clip_dive: error: no space left on {checkpoints}: could not write "
                    f"{checkpoints / 'epoch_2.pt'} (the previous checkpoint, if any, is kept); free space or point "
                    "--logs elsewhere, then --resume latest"), done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_1.pt"]  # no partial file left
    assert torch.load(checkpoints / "epoch_1.pt", weights_only=True)["epoch"] == 1


def test_full_disk_at_a_preemption_checkpoint_exits_1_and_stale_partials_are_cleaned(tiny_data, small_disk):
    env = subprocess_env()
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (40 << 20))  # leave ~20 MB: out.log fits, a checkpoint does not
    log = small_disk / "pre" / "out.log"
    proc = subprocess.Popen(argv(tiny_data, small_disk, "pre", epochs=1), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and "Train Epoch: 0 [ 8/" in log.read_text():
            proc.send_signal(signal.SIGUSR1)
            break
        time.sleep(0.02)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 1, err[-3000:]
    checkpoints = small_disk / "pre" / "checkpoints"
    assert last_line(err).startswith(f"open_clip_dive: error: no space left on {checkpoints}: could not write "
                                     f"{checkpoints}/epoch_0_step_"), err[-3000:]
    assert not list(checkpoints.iterdir())

    # a killed write's partial file is cleaned when the run starts again
    filler.unlink()
    stale = checkpoints / f"epoch_0_step_1.pt{PARTIAL_SUFFIX}"
    stale.write_bytes(b"\0" * (30 << 20))
    resumed = subprocess.run(argv(tiny_data, small_disk, "pre", "--resume", "latest", epochs=1), env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not stale.exists()
    assert (checkpoints / "epoch_1.pt").exists()


def test_diverging_loss_stops_naming_step_and_term_and_keeps_the_good_checkpoint(tiny_data, tmp_path):
    env = subprocess_env()
    first = subprocess.run(argv(tiny_data, tmp_path, "nan", epochs=1), env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    good = tmp_path / "nan" / "checkpoints" / "epoch_1.pt"
    before = good.read_bytes()
    blown = subprocess.run(argv(tiny_data, tmp_path, "nan", "--resume", "latest", "--lr", "1e30"), env=env,
                           capture_output=True, text=True)
    assert blown.returncode == 1, blown.stderr[-3000:]
    line = last_line(blown.stderr)
    assert line.startswith("open_clip_dive: error: non-finite loss at epoch 1, step "), blown.stderr[-3000:]
    assert "(rank 0: contrastive_loss = nan" in line and "the last checkpoint is kept" in line
    assert good.read_bytes() == before
    assert sorted(p.name for p in good.parent.iterdir()) == ["epoch_1.pt"]


def test_logs_on_a_read_only_mount_is_refused_before_anything_is_built(tiny_data, tmp_path):
    where = tmp_path / "ro"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        done = subprocess.run(argv(tiny_data, where / "logs", "ro", epochs=1), env=subprocess_env(),
                              capture_output=True, text=True)
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    assert last_line(done.stderr) == (f"open_clip_dive: error: --logs: cannot write to '{where / 'logs'}' (Read-only "
                                      "file system); give a writable directory")
    assert "Traceback" not in done.stderr
