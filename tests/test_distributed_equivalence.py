"""Distributed correctness of DiVE: 2 ranks x batch b match 1 rank x batch 2b on the same samples
(EMA vector, AVL / PVL values averaged over ranks, gradients) for DDP (gloo) and Horovod."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import subprocess_env

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "dist_equivalence.py")
pytestmark = pytest.mark.timeout(600)


def compare(tmp_path, mode):
    single = torch.load(tmp_path / "single_rank0.pt")
    ranks = [torch.load(tmp_path / f"{mode}_rank{r}.pt") for r in (0, 1)]
    for step, one in enumerate(single):
        for term in ("avl_loss", "pvl_loss"):  # each rank averages its half: the mean over ranks is the whole
            mean = (ranks[0][step]["losses"][term] + ranks[1][step]["losses"][term]) / 2
            assert torch.allclose(mean, one["losses"][term], rtol=1e-5), (step, term)
        for r in ranks:
            assert torch.allclose(r[step]["ema"], one["ema"], atol=1e-7), step
            for name, grad in one["grads"].items():
                key = name if name in r[step]["grads"] else f"module.{name}"
                assert (r[step]["grads"][key] - grad).abs().max() <= 1e-4 * grad.abs().max() + 1e-8, (step, name)
    assert single[-1]["ema"].norm() > 0


def run(cmd, tmp_path):
    result = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stderr[-3000:]


def test_ddp_two_ranks_match_one_rank_with_the_whole_batch(tmp_path):
    run([sys.executable, SCRIPT, str(tmp_path), "single"], tmp_path)
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
         SCRIPT, str(tmp_path), "ddp"], tmp_path)
    compare(tmp_path, "ddp")


@pytest.mark.horovod
def test_horovod_two_ranks_match_one_rank_with_the_whole_batch(tmp_path):
    try:
        import horovod.torch  # noqa: F401
    except ImportError:
        if os.environ.get("DIVE_REQUIRE_HOROVOD"):
            raise
        pytest.skip("horovod is not installed (scripts/build_horovod.sh)")
    horovodrun = shutil.which("horovodrun") or os.path.join(os.path.dirname(sys.executable), "horovodrun")
    run([sys.executable, SCRIPT, str(tmp_path), "single"], tmp_path)
    run([horovodrun, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, SCRIPT, str(tmp_path), "horovod"],
        tmp_path)
    compare(tmp_path, "horovod")
