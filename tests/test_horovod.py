"""launch_scripts/horovod.sh: real horovodrun (Gloo), 2 CPU processes, DiVE on tiny data."""

import os

import pytest

from cluster.common import (LAUNCH, assert_checkpoint_loads, assert_disjoint_shards, assert_ema_agrees,
                            launcher_env, make_tiny_data, recipe_env, run_launcher, trainer_extra)
from cluster.horovod import horovod_built  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_data(str(tmp_path_factory.mktemp("hvddata")))


@pytest.mark.horovod
def test_horovodrun_dive_two_processes_split_shards_and_agree_on_the_ema(horovod_built, data, tmp_path):
    env = launcher_env(NP=2, **recipe_env(data, tmp_path, "hvd"))
    result = run_launcher([os.path.join(LAUNCH, "horovod.sh"), *trainer_extra(data)], env, timeout=400,
                          cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:]
    run = tmp_path / "hvd"
    log = (run / "out.log").read_text()
    assert "horovod" in log.lower() and "total 2" in log
    assert_disjoint_shards(run, 2, num_samples=data["num_samples"])
    ema = assert_ema_agrees(run, 2)
    assert_checkpoint_loads(run / "checkpoints" / "epoch_1.pt", data["config"], expect_ema=ema)


def test_horovod_sh_without_horovod_says_so(tmp_path):
    """horovod.sh with an interpreter that cannot import horovod.torch: one line naming the build script."""
    fake = tmp_path / "fake" / "horovod"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('horovod is not built (simulated)')\n")
    env = launcher_env(NP=2, DIVE_DEVICE="cpu")
    env["PYTHONPATH"] = f"{tmp_path / 'fake'}{os.pathsep}{env['PYTHONPATH']}"
    result = run_launcher([os.path.join(LAUNCH, "horovod.sh")], env, timeout=120, cwd=tmp_path)
    line = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 2
    assert "Horovod is requested but 'import horovod.torch' fails" in line and "scripts/build_horovod.sh" in line
