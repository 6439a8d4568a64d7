"""launch_scripts/torchrun.sh and torchrun_multinode.sh: real torchrun, 2 CPU processes (gloo), DiVE on tiny data."""

import os
import socket

import pytest

from cluster.common import (LAUNCH, assert_checkpoint_loads, assert_disjoint_shards, assert_ema_agrees,
                            launcher_env, make_tiny_data, recipe_env, run_launcher, trainer_extra)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_data(str(tmp_path_factory.mktemp("torchrundata")))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_run(run_dir, data):
    assert "Running in distributed mode" in (run_dir / "out.log").read_text()
    assert_disjoint_shards(run_dir, 2, num_samples=data["num_samples"])
    ema = assert_ema_agrees(run_dir, 2)
    assert_checkpoint_loads(run_dir / "checkpoints" / "epoch_1.pt", data["config"], expect_ema=ema)


def test_torchrun_sh_two_cpu_processes(data, tmp_path):
    env = launcher_env(NPROC=2, **recipe_env(data, tmp_path, "single"))
    result = run_launcher([os.path.join(LAUNCH, "torchrun.sh"), *trainer_extra(data)], env, timeout=400,
                          cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:]
    check_run(tmp_path / "single", data)


@pytest.mark.parametrize("rendezvous", ["static", "c10d"])
def test_torchrun_multinode_sh_two_nodes_on_localhost(data, tmp_path, rendezvous):
    """Two torchrun agents (two "nodes" of one process each) meet at MASTER_ADDR:MASTER_PORT."""
    port = free_port()
    procs = []
    for node in (0, 1):
        extra = dict(NNODES=2, NPROC_PER_NODE=1, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RDZV_TIMEOUT=120,
                     RDZV_ID=f"test-{port}")
        if rendezvous == "static":
            extra["NODE_RANK"] = node
        env = launcher_env(**extra, **recipe_env(data, tmp_path, "multi"))
        procs.append((node, env))
    import subprocess
    import signal

    running = [subprocess.Popen([os.path.join(LAUNCH, "torchrun_multinode.sh"), *trainer_extra(data)], env=env,
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True) for _, env in procs]
    outputs = []
    try:
        for proc in running:
            out, _ = proc.communicate(timeout=400)
            outputs.append(out)
    finally:
        for proc in running:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for proc, out in zip(running, outputs):
        assert proc.returncode == 0, out[-4000:]
    check_run(tmp_path / "multi", data)


# --- bad input: one clear line, nothing hangs --------------------------------------------------------------
def run_bad(script, tmp_path, timeout=120, **env):
    result = run_launcher([os.path.join(LAUNCH, script)], launcher_env(**env), timeout=timeout, cwd=tmp_path)
    lines = [l for l in result.stdout.strip().splitlines() if l.strip()]
    return result.returncode, (lines[-1] if lines else "")


@pytest.mark.parametrize("script, env, message", [
    ("torchrun_multinode.sh", dict(NNODES=2), "set MASTER_ADDR to the address of node 0"),
    ("torchrun_multinode.sh", dict(MASTER_ADDR="127.0.0.1"), "set NNODES"),
    ("torchrun_multinode.sh", dict(NNODES=2, MASTER_ADDR="127.0.0.1", NODE_RANK=2, DIVE_DEVICE="cpu"),
     "NODE_RANK must be in 0..1"),
    ("torchrun.sh", dict(NPROC=3, DIVE_DEVICE="cpu"), "DIVE_GLOBAL_BATCH=512 does not divide over 3 ranks"),
    ("torchrun.sh", dict(NPROC="two", DIVE_DEVICE="cpu"), "NPROC must be a positive integer"),
    ("slurm_dive.sbatch", dict(DIVE_DEVICE="cpu"), "not inside a SLURM allocation (SLURM_JOB_ID is unset)"),
])
def test_launcher_bad_input(tmp_path, script, env, message):
    code, line = run_bad(script, tmp_path, **env)
    assert code == 2 and message in line, line


def test_world_size_that_does_not_divide_the_shards(tmp_path):
    """3 shards over 2 ranks without --dataset-resampled: the trainer stops with one line on every rank."""
    data = make_tiny_data(str(tmp_path / "data"), id_shards=3, id_per_shard=8)
    env = launcher_env(NPROC=2, **recipe_env(data, tmp_path, "uneven"))
    result = run_launcher([os.path.join(LAUNCH, "torchrun.sh"), *trainer_extra(data)], env, timeout=300,
                          cwd=tmp_path)
    assert result.returncode != 0
    assert "do not split evenly over 2 ranks" in result.stdout, result.stdout[-3000:]
