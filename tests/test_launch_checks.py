"""Launch mistakes get one clear line; the Horovod sampler fix takes rank and size from Horovod."""

import argparse

import pytest

from open_clip_dive.errors import DiveUsageError
from open_clip_dive.plugin import check_launch_environment


def args(**kw):
    base = dict(horovod=False, dist_url="env://")
    base.update(kw)
    return argparse.Namespace(**base)


def test_srun_without_master_addr_is_explained():
    env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1"}
    with pytest.raises(DiveUsageError, match=r"SLURM task 1 of 2 without MASTER_ADDR/MASTER_PORT"):
        check_launch_environment(args(), env)
    check_launch_environment(args(), {**env, "MASTER_ADDR": "node1", "MASTER_PORT": "12802"})
    check_launch_environment(args(dist_url="tcp://node1:1234"), env)
    check_launch_environment(args(), {**env, "WORLD_SIZE": "2"})  # torchrun inside srun sets its own
    check_launch_environment(args(), {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"})  # one task: not distributed
