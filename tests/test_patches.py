"""patches/: each applies cleanly to the pinned release, and the patched open_clip_train does what it promises.

The patched package is built by scripts/check_patches.sh into a temporary dir and put first on PYTHONPATH of
subprocesses (the installed open_clip_torch stays untouched).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from cluster.common import SCRIPTS, launcher_env, run_launcher
from cluster.horovod import horovod_built  # noqa: F401  (fixture)
from helpers import REPO, TINY_MODEL_CFG

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="session")
def patched(tmp_path_factory):
    out = tmp_path_factory.mktemp("patched")
    result = subprocess.run(["bash", os.path.join(SCRIPTS, "check_patches.sh"), "--out", str(out)],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr[-4000:]
    site = out / "open_clip-site"
    assert f"DIVE_TEST_OPEN_CLIP_PATH={site}" in result.stdout
    return {"out": out, "site": site, "log": result.stderr}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("localmodel")
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_MODEL_CFG, "preprocess_cfg": {}}))
    return d


def env_with(site=None, **extra):
    env = launcher_env(**extra)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (site, REPO) if p)
    return env


def plain_open_clip_args(model_dir, logs, name, *extra):
    return ["--dataset-type", "synthetic", "--train-num-samples", "16", "--batch-size", "4", "--epochs", "1",
            "--model", f"local-dir:{model_dir}", "--device", "cpu", "--precision", "fp32", "--workers", "0",
            "--report-to", "none", "--warmup", "1", "--logs", str(logs), "--name", name, *extra]


def test_patches_apply_cleanly(patched):
    log = patched["log"]
    assert "horovod-0.28.1-torch2.14.patch applies cleanly to horovod-0.28.1" in log
    assert "open_clip-3.3.0-dive-hooks.patch applies cleanly to open_clip_torch-3.3.0" in log
    src = patched["site"] / "open_clip_train"
    assert (src / "hooks.py").exists()
    assert "ddp_device_ids(device)" in (src / "main.py").read_text()


def test_patched_open_clip_train_runs_ddp_on_cpu(patched, tiny_model_dir, tmp_path):
    """Upstream passes device_ids=[cpu] to DDP and crashes under torchrun on CPU; the patched main trains."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "open_clip_train.main"]
    # --logs is swallowed by torchrun's own parser: run in tmp_path and keep the default ./logs
    pristine = run_launcher(launcher + plain_open_clip_args(tiny_model_dir, "./logs", "pristine")[:-4],
                            env_with(None), timeout=300, cwd=tmp_path)
    assert pristine.returncode != 0 and "device_ids" in pristine.stdout, pristine.stdout[-3000:]
    fixed = run_launcher(launcher + plain_open_clip_args(tiny_model_dir, "./logs", "fixed")[:-4],
                         env_with(patched["site"]), timeout=300, cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stdout[-3000:]
    logs = list((tmp_path / "logs").glob("*/out.log"))
    assert any("Running in distributed mode" in p.read_text() and "total 2" in p.read_text() for p in logs)


HOOK_PROBE = textwrap.dedent("""
    import json, sys
    from open_clip_train import hooks
    import open_clip_train.main as m
    calls = []
    def spy(name, original):
        def hook(*a, **kw):
            calls.append(name)
            return original(*a, **kw)
        return hook
    originals = {"parse_args": m.parse_args, "init_distributed_device": m.init_distributed_device,
                 "setup_logging": m.setup_logging, "get_latest_checkpoint": m.get_latest_checkpoint,
                 "create_model_and_transforms": m.create_model_and_transforms, "pt_load": m.pt_load,
                 "get_data": m.get_data, "create_loss": m.create_loss, "train_one_epoch": m.train_one_epoch,
                 "evaluate": m.evaluate, "save_checkpoint": m.save_checkpoint}
    assert set(originals) == set(hooks.HOOKS), sorted(set(hooks.HOOKS) ^ set(originals))
    for name, fn in originals.items():
        hooks.register(name, spy(name, fn))
    argv = sys.argv[1:]
    assert m.main(argv + ["--epochs", "1"]) is None
    assert m.main(argv + ["--epochs", "2", "--resume", "latest"]) is None
    print(json.dumps(calls))
""")


def test_patched_main_calls_every_hook(patched, tiny_model_dir, tmp_path):
    """Every hook point is used by main(): registered pass-through spies see their calls, checkpoints are atomic."""
    probe = tmp_path / "probe.py"
    probe.write_text(HOOK_PROBE)
    args = plain_open_clip_args(tiny_model_dir, tmp_path / "logs", "hooks")
    result = subprocess.run([sys.executable, str(probe), *args], env=env_with(patched["site"]), capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    calls = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("parse_args", "init_distributed_device", "setup_logging", "create_model_and_transforms", "get_data",
                 "create_loss", "train_one_epoch", "save_checkpoint", "get_latest_checkpoint", "pt_load"):
        assert name in calls, (name, calls)
    assert calls.count("train_one_epoch") == 2  # one epoch, then one more after resuming
    checkpoints = sorted(os.listdir(tmp_path / "logs" / "hooks" / "checkpoints"))
    assert checkpoints == ["epoch_1.pt", "epoch_2.pt"], checkpoints  # written via <name>.partial + os.replace
    assert calls.count("save_checkpoint") == 2


def test_plugin_registers_hooks_instead_of_rebinding(patched):
    code = textwrap.dedent("""
        import open_clip_train.data as d, open_clip_train.main as m, open_clip_train.params as p, torch
        from open_clip_train import hooks
        import open_clip_dive
        open_clip_dive.install()
        assert m.parse_args is p.parse_args, "open_clip_train.main.parse_args was rebound"
        assert m.torch is torch, "open_clip_train.main.torch was replaced"
        assert d.DistributedSampler is torch.utils.data.distributed.DistributedSampler, "sampler was replaced"
        names = set(hooks.registered())
        assert {"parse_args", "get_data", "create_loss", "train_one_epoch"} <= names, names
    """)
    result = subprocess.run([sys.executable, "-c", code], env=env_with(patched["site"]), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


HOROVOD_PROBE = textwrap.dedent("""
    import argparse
    import webdataset as wds
    from open_clip_train.distributed import init_distributed_device
    args = argparse.Namespace(horovod=True, device="cpu", dist_backend=None, dist_url=None, no_set_device_rank=False)
    init_distributed_device(args)
    rank, world_size, _, _ = wds.utils.pytorch_worker_info()
    assert (rank, world_size) == (args.rank, 2), (rank, world_size, args.rank)
    print("wds sees rank", rank, "of", world_size)
""")


@pytest.mark.horovod
@pytest.mark.slow
def test_patched_open_clip_train_under_horovod(horovod_built, patched, tiny_model_dir, tmp_path):
    """Upstream: synthetic/csv data crash under --horovod (DistributedSampler asks torch.distributed) and
    webdataset's split_by_node sees every rank as rank 0 of 1.  Patched: both work."""
    env = env_with(patched["site"])
    probe = tmp_path / "probe.py"
    probe.write_text(HOROVOD_PROBE)
    horovodrun = [sys.executable, "-m", "horovod.runner.launch", "-np", "2", "-H", "localhost:2", "--gloo"]
    split = run_launcher(horovodrun + [sys.executable, str(probe)], env, timeout=300, cwd=tmp_path)
    assert split.returncode == 0, split.stdout[-3000:]
    assert "wds sees rank 0 of 2" in split.stdout and "wds sees rank 1 of 2" in split.stdout

    args = plain_open_clip_args(tiny_model_dir, tmp_path / "logs", "hvd", "--horovod")
    pristine_args = plain_open_clip_args(tiny_model_dir, tmp_path / "logs", "hvd-pristine", "--horovod")
    pristine = run_launcher(horovodrun + [sys.executable, "-m", "open_clip_train.main", *pristine_args],
                            env_with(None), timeout=300, cwd=tmp_path)
    assert pristine.returncode != 0 and "Default process group has not been initialized" in pristine.stdout
    fixed = run_launcher(horovodrun + [sys.executable, "-m", "open_clip_train.main", *args], env, timeout=300,
                         cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stdout[-3000:]
    assert (tmp_path / "logs" / "hvd" / "checkpoints" / "epoch_1.pt").exists()
