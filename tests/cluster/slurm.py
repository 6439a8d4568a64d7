"""The `slurm_cluster` fixture: a real one-node SLURM cluster on localhost (scripts/slurm_cluster.sh).

If DIVE_SLURM_DIR names a cluster that is already up (e.g. started by .ci/run), the tests use it and leave it
running.  Otherwise the fixture starts one in a temporary directory (installing slurm/munge with apt-get when
missing, which needs root) and stops its daemons by PID afterwards.  Where SLURM cannot be brought up, the tests
are skipped, or fail when DIVE_REQUIRE_SLURM=1 (CI).
"""

import os
import re
import subprocess
import sys
import time

import pytest

from .common import SCRIPTS

CLUSTER_SCRIPT = os.path.join(SCRIPTS, "slurm_cluster.sh")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED"}


class SlurmCluster:
    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.conf = os.path.join(state_dir, "slurm.conf")
        self.jobs = []

    def env(self, base):
        env = dict(base)
        env["SLURM_CONF"] = self.conf
        return env

    def run(self, *cmd, timeout=30, check=True):
        result = subprocess.run([str(c) for c in cmd], env=self.env(os.environ), capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, cmd))} failed ({result.returncode}): {result.stderr}")
        return result

    def sbatch(self, script, args=(), options=(), env=None):
        result = subprocess.run(["sbatch", "--parsable", *map(str, options), str(script), *map(str, args)],
                                env=self.env(env or os.environ), capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"sbatch failed: {result.stderr}"
        job = result.stdout.strip().split(";")[0]
        self.jobs.append(job)
        return job

    def job(self, job_id):
        """scontrol's record of the job as a dict (kept by slurmctld for MinJobAge=600 s after it ends)."""
        result = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        if result.returncode != 0:
            return {}
        return dict(re.findall(r"(\w+)=(\S*)", result.stdout))

    def state(self, job_id):
        return self.job(job_id).get("JobState", "UNKNOWN")

    def wait(self, job_id, timeout, release_requeued=True, until=None):
        """Wait for a terminal state (or for `until(info)` to be true).  A requeued job waits ~2 min for its
        EligibleTime; with release_requeued the test lets it start at once (scontrol update StartTime=now)."""
        deadline = time.monotonic() + timeout
        info = {}
        held_since = None
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if until is not None and until(info):
                return info
            state = info.get("JobState")
            if state in TERMINAL:
                return info
            if release_requeued and state == "PENDING" and info.get("Reason") == "BeginTime":
                # slurmd revokes the old credential at requeue time (1 s resolution): a start within the same
                # second fails with "Job credential revoked".  SLURM's own hold is ~2 min; a few seconds suffice.
                held_since = held_since or time.monotonic()
                if time.monotonic() - held_since > 3:
                    self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)
            else:
                held_since = None
            time.sleep(0.5)
        self.cancel(job_id)
        raise AssertionError(f"job {job_id} did not finish within {timeout} s (last state: {info.get('JobState')})")

    def cancel(self, job_id):
        self.run("scancel", "--full", job_id, check=False)

    def cancel_all_and_wait(self, timeout=30):
        for job in self.jobs:
            self.cancel(job)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
            if not set(out) & set(self.jobs):
                return
            time.sleep(0.5)


def _cluster_cmd(action, state_dir, timeout=300):
    return subprocess.run(["bash", CLUSTER_SCRIPT, action, "--state-dir", state_dir], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHON": sys.executable})


def _unavailable(reason):
    if os.environ.get("DIVE_REQUIRE_SLURM") == "1":
        pytest.fail(f"SLURM is required (DIVE_REQUIRE_SLURM=1) but unavailable: {reason}")
    pytest.skip(f"SLURM unavailable: {reason}")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    shared = os.environ.get("DIVE_SLURM_DIR")
    if shared and _cluster_cmd("status", shared).returncode == 0:
        cluster = SlurmCluster(shared)
        yield cluster
        cluster.cancel_all_and_wait()
        return
    if os.geteuid() != 0:
        _unavailable("the test cluster runs its daemons as root")
    # a short path: munged's socket lives in it and unix socket paths are limited to 107 bytes
    state_dir = str(tmp_path_factory.mktemp("slurm"))
    up = _cluster_cmd("up", state_dir)
    if up.returncode != 0:
        _cluster_cmd("down", state_dir)
        _unavailable(f"scripts/slurm_cluster.sh up failed: {up.stderr.strip()[-2000:]}")
    cluster = SlurmCluster(state_dir)
    try:
        yield cluster
    finally:
        cluster.cancel_all_and_wait()
        down = _cluster_cmd("down", state_dir)
        assert down.returncode == 0, down.stderr
