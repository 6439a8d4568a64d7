"""launch_scripts/slurm_dive.sbatch against a real SLURM (munged + slurmctld + slurmd on localhost).

Each test submits the project's own sbatch script with sbatch, CPU override: DIVE_DEVICE=cpu and
`sbatch --gpus-per-node=0 --nodes=N --ntasks-per-node=M --cpus-per-task=1`.  The cluster has two nodes (two
slurmd on this machine), so `--nodes=2` is a real multi-node srun.
"""

import os
import sys

import pytest
import torch

from cluster.common import (LAUNCH, assert_checkpoint_loads, assert_disjoint_shards, assert_ema_agrees,
                            launcher_env, make_tiny_data, max_param_diff, recipe_env, run_launcher, sample_keys,
                            trainer_extra)
from cluster.slurm import slurm_cluster  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(900)]

SBATCH = os.path.join(LAUNCH, "slurm_dive.sbatch")
CPU_OPTIONS = ["--gpus-per-node=0", "--cpus-per-task=1", "--time=15"]
ONE_NODE = ["--nodes=1", "--ntasks-per-node=2"]
TWO_NODES = ["--nodes=2", "--ntasks-per-node=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 2 ID shards x 64 samples: with a global batch of 8, 16 steps per epoch, so a signal lands mid-epoch
    return make_tiny_data(str(tmp_path_factory.mktemp("slurmdata")), id_per_shard=64)


def submit(cluster, data, logs, name, layout, epochs=1, extra_env=None, options=()):
    env = launcher_env(**recipe_env(data, logs, name, epochs=epochs, **(extra_env or {})))
    out = os.path.join(str(logs), f"slurm-{name}-%j.out")
    job = cluster.sbatch(SBATCH, trainer_extra(data), [*CPU_OPTIONS, *layout, f"--output={out}", *options], env=env)
    return job, out.replace("%j", job)


def tail(path, n=4000):
    try:
        with open(path) as f:
            return f.read()[-n:]
    except OSError:
        return f"(no {path})"


@pytest.mark.parametrize("layout, nodes", [(ONE_NODE, "node1"), (TWO_NODES, "node[1-2]")], ids=["1x2", "2x1"])
def test_sbatch_dive_two_tasks_complete_on_disjoint_data(slurm_cluster, data, tmp_path, layout, nodes):
    job, out = submit(slurm_cluster, data, tmp_path, "two", layout)
    info = slurm_cluster.wait(job, timeout=400)
    assert info["JobState"] == "COMPLETED", tail(out)
    assert info["ExitCode"] == "0:0"
    assert info["NodeList"] == nodes and info["NumTasks"] == "2"
    log = tail(out, 100000)
    assert f"2 tasks on {nodes}," in log and "MASTER_ADDR=127.0.0.1" in log
    run = tmp_path / "two"
    assert "Running in distributed mode" in (run / "out.log").read_text()
    assert_disjoint_shards(run, 2, num_samples=data["num_samples"])
    ema = assert_ema_agrees(run, 2)
    assert_checkpoint_loads(run / "checkpoints" / "epoch_1.pt", data["config"], expect_ema=ema)


def test_usr1_checkpoints_requeues_and_resumes_like_an_uninterrupted_run(slurm_cluster, data, tmp_path):
    """scancel --signal=USR1 mid-epoch, on a job of two nodes: the ranks finish the step, rank 0 writes
    epoch_0_step_S.pt, all exit 75, the script requeues the job, SLURM restarts it with the same job id,
    --resume latest continues mid-epoch and the run ends where an uninterrupted one ends."""
    reference, ref_out = submit(slurm_cluster, data, tmp_path, "straight", TWO_NODES, epochs=2)
    info = slurm_cluster.wait(reference, timeout=400)
    assert info["JobState"] == "COMPLETED", tail(ref_out)

    # a checkpoint that a kill left half-written, named further on than anything this run will write before
    # the signal: --resume latest must pass over it, both at the first start and after the requeue
    run = tmp_path / "preempted"
    (run / "checkpoints").mkdir(parents=True)
    whole = (tmp_path / "straight" / "checkpoints" / "epoch_1.pt").read_bytes()
    (run / "checkpoints" / "epoch_1_step_3.pt").write_bytes(whole[: len(whole) // 2])

    job, out = submit(slurm_cluster, data, tmp_path, "preempted", TWO_NODES, epochs=2)

    def some_steps_done(info):  # wait for rank 0 to record ~5 steps (4 samples a step), then signal
        try:
            return len(sample_keys(run, 0)) >= 20
        except FileNotFoundError:
            return info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED")

    slurm_cluster.wait(job, timeout=300, until=some_steps_done)
    assert slurm_cluster.state(job) == "RUNNING", tail(out)
    slurm_cluster.run("scancel", "--signal=USR1", job)
    info = slurm_cluster.wait(job, timeout=600)
    log = tail(out, 200000)
    assert info["JobState"] == "COMPLETED", log[-4000:]
    assert info["Restarts"] == "1", log[-4000:]
    assert "checkpointed and stopped (status 75); requeueing job" in log
    assert "restart 1:" in log

    checkpoints = sorted(os.listdir(run / "checkpoints"))
    step_checkpoints = [c for c in checkpoints if c.startswith("epoch_0_step_")]
    assert len(step_checkpoints) == 1, checkpoints
    assert not [c for c in checkpoints if c.endswith(".partial")], checkpoints
    run_log = (run / "out.log").read_text()
    assert f"Found latest resume checkpoint at {run / 'checkpoints' / step_checkpoints[0]}" in run_log
    assert "epoch_1_step_3.pt" not in run_log.split("Found latest resume checkpoint at")[1].splitlines()[0]

    # the interrupted run saw exactly the samples of the uninterrupted one, in the same order, and ends equal
    for rank in (0, 1):
        assert sample_keys(run, rank) == sample_keys(tmp_path / "straight", rank), f"rank {rank}"
        assert sample_keys(run, rank, "ref") == sample_keys(tmp_path / "straight", rank, "ref"), f"rank {rank}"
    final = assert_checkpoint_loads(run / "checkpoints" / "epoch_2.pt", data["config"])
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "epoch_2.pt", weights_only=True)
    assert max_param_diff(final, straight) < 1e-5
    assert torch.allclose(final["dive"]["ema"], straight["dive"]["ema"], atol=1e-7)
    assert assert_ema_agrees(run, 2).equal(final["dive"]["ema"])


def test_srun_without_master_addr_fails_with_a_clear_line(slurm_cluster, data, tmp_path):
    """Plain srun (no batch script exporting MASTER_ADDR): the ranks stop with a message, nothing hangs."""
    env = slurm_cluster.env(launcher_env())
    args = ["--dive-model-config", data["config"], "--model", "dive-tiny", "--train-data", data["id"],
            "--classnames", data["classnames"], "--loss", "flyp", "--batch-size", "4", "--epochs", "1",
            "--device", "cpu", "--precision", "fp32", "--workers", "0", "--logs", tmp_path, "--report-to", "none"]
    result = run_launcher(["srun", "-N2", "-n2", "--cpus-per-task=1", "--gpus-per-node=0", sys.executable, "-m",
                           "open_clip_dive.main", *args], env, timeout=180)
    assert result.returncode != 0
    assert "MASTER_ADDR" in result.stdout, result.stdout[-3000:]


def test_scancel_sigterm_to_every_task_and_worker_checkpoints_requeues_and_resumes(slurm_cluster, data, tmp_path):
    """`scancel --signal=TERM` signals every process of the job step, the DataLoader workers included (as SLURM
    does on preemption and at the time limit): the workers must not die of it; the ranks checkpoint, exit 75, the
    job is requeued and ends with the weights of an uninterrupted run."""
    workers = {"DIVE_WORKERS": 1}
    reference, ref_out = submit(slurm_cluster, data, tmp_path, "straight", ONE_NODE, epochs=2, extra_env=workers)
    info = slurm_cluster.wait(reference, timeout=400)
    assert info["JobState"] == "COMPLETED", tail(ref_out)

    run = tmp_path / "term"
    job, out = submit(slurm_cluster, data, tmp_path, "term", ONE_NODE, epochs=2, extra_env=workers)

    def some_steps_done(info):
        try:
            return len(sample_keys(run, 0)) >= 20
        except FileNotFoundError:
            return info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED")

    slurm_cluster.wait(job, timeout=300, until=some_steps_done)
    assert slurm_cluster.state(job) == "RUNNING", tail(out)
    slurm_cluster.run("scancel", "--signal=TERM", job)
    info = slurm_cluster.wait(job, timeout=600)
    log = tail(out, 200000)
    assert info["JobState"] == "COMPLETED", log[-4000:]
    assert info["Restarts"] == "1", log[-4000:]
    assert "is killed by signal" not in log
    assert "checkpointed and stopped (status 75); requeueing job" in log
    assert [c for c in os.listdir(run / "checkpoints") if c.startswith("epoch_0_step_")]
    for rank in (0, 1):
        assert sample_keys(run, rank) == sample_keys(tmp_path / "straight", rank), f"rank {rank}"
    final = assert_checkpoint_loads(run / "checkpoints" / "epoch_2.pt", data["config"])
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "epoch_2.pt", weights_only=True)
    assert max_param_diff(final, straight) < 1e-5
