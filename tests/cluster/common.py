"""Running the launch scripts on tiny data and checking what the ranks did."""

import os
import signal
import subprocess
import sys

import torch

from helpers import REPO, TINY_MODEL, subprocess_env, write_shards, write_tiny_model_config

LAUNCH = os.path.join(REPO, "launch_scripts")
SCRIPTS = os.path.join(REPO, "scripts")


def launcher_env(**extra):
    """The test environment for a launcher.  DIVE_TEST_OPEN_CLIP_PATH (set by scripts/check_patches.sh --test)
    puts a patched open_clip_train in front of the installed one, in every rank."""
    env = subprocess_env(**extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("DIVE_TEST_OPEN_CLIP_PATH"), REPO) if p)
    env["DIVE_PYTHON"] = sys.executable  # launchers start ranks with this interpreter
    for key in ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_NODELIST", "SLURM_JOB_NODELIST",
                "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        if key not in extra:
            env.pop(key, None)
    return env


def make_tiny_data(root, id_per_shard=16, id_shards=2, ref_per_shard=16, ref_shards=2):
    os.makedirs(root, exist_ok=True)
    return {
        "config": write_tiny_model_config(os.path.join(root, "configs")),
        "id": write_shards(os.path.join(root, "id"), "id", num_shards=id_shards, per_shard=id_per_shard,
                           num_classes=4, seed=1),
        "ref": write_shards(os.path.join(root, "ref"), "ref", num_shards=ref_shards, per_shard=ref_per_shard,
                            with_cls=False, with_txt=True, seed=2),
        "classnames": os.path.join(root, "id", "classnames.json"),
        "num_samples": id_per_shard * id_shards,
    }


def recipe_env(data, logs, name, global_batch=8, epochs=1, **extra):
    """DIVE_* variables that shrink the paper's recipe (the launchers' defaults) to the tiny model and data."""
    env = dict(
        DIVE_DEVICE="cpu", DIVE_TRAIN_DATA=data["id"], DIVE_REF_DATA=data["ref"],
        DIVE_TRAIN_NUM_SAMPLES=data["num_samples"], DIVE_CLASSNAMES=data["classnames"], DIVE_MODEL=TINY_MODEL,
        DIVE_PRETRAINED="", DIVE_GLOBAL_BATCH=global_batch, DIVE_EPOCHS=epochs, DIVE_WARMUP=2, DIVE_LR="1e-3",
        DIVE_WORKERS=0, DIVE_LOGS=str(logs), DIVE_NAME=name, DIVE_AVL_WEIGHT=10, DIVE_PVL_WEIGHT=10,
    )
    env.update(extra)
    return {k: str(v) for k, v in env.items()}


def trainer_extra(data):
    """Trainer flags the launchers do not set from variables: the tiny model config and the debug records."""
    return ["--dive-model-config", data["config"], "--dive-log-sample-keys", "--log-every-n-steps", "1"]


def run_launcher(cmd, env, timeout, cwd=None):
    """Run a launcher in its own process group; on timeout kill that group (and only it) and fail."""
    proc = subprocess.Popen([str(c) for c in cmd], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, _ = proc.communicate()
        raise AssertionError(f"{cmd[0]} did not finish within {timeout} s; output tail:\n{out[-4000:]}")
    finally:
        kill_group(proc)  # stray ranks of a launcher that exited
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def sample_keys(run_dir, rank, kind="id"):
    path = os.path.join(run_dir, f"sample_keys_rank{rank}.txt")
    with open(path) as f:
        return [line.split(maxsplit=1)[1].strip() for line in f if line.startswith(kind + " ")]


def assert_disjoint_shards(run_dir, world_size, num_samples=None, epochs=1):
    """Each rank trained on its own ID samples, and together they covered the data once per epoch."""
    keys = [sample_keys(run_dir, r) for r in range(world_size)]
    for r, k in enumerate(keys):
        assert k, f"rank {r} recorded no samples"
    sets = [set(k) for k in keys]
    for a in range(world_size):
        for b in range(a + 1, world_size):
            assert not sets[a] & sets[b], f"ranks {a} and {b} trained on the same samples: {sorted(sets[a] & sets[b])[:5]}"
    # shard-level split: a shard is read by one rank only (the keys are '<shard>.tar/<key>' or '<key>')
    shards = [{k.split("/")[0] for k in s} if all("/" in k for k in s) else None for s in sets]
    if all(s is not None for s in shards):
        for a in range(world_size):
            for b in range(a + 1, world_size):
                assert not shards[a] & shards[b], f"ranks {a} and {b} read the same shard(s) {shards[a] & shards[b]}"
    if num_samples is not None:
        assert sum(len(k) for k in keys) == num_samples * epochs
        assert len(set().union(*sets)) == num_samples


def load_ema(run_dir, rank):
    return torch.load(os.path.join(run_dir, f"dive_ema_rank{rank}.pt"), weights_only=True)


def assert_ema_agrees(run_dir, world_size):
    emas = [load_ema(run_dir, r) for r in range(world_size)]
    assert emas[0].norm() > 0, "the EMA vector was never updated"
    for r in range(1, world_size):
        assert torch.equal(emas[0], emas[r]), f"rank {r}'s EMA differs from rank 0's"
    return emas[0]


def assert_checkpoint_loads(path, config_path, expect_ema=None):
    """The checkpoint is open_clip's format (loads with create_model_and_transforms) plus the DiVE entry."""
    import open_clip

    open_clip.add_model_config(config_path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert {"epoch", "state_dict", "optimizer"} <= set(checkpoint)
    assert "ema" in checkpoint["dive"]
    model, _, _ = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=str(path))
    state = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    if expect_ema is not None:
        assert torch.equal(checkpoint["dive"]["ema"], expect_ema)
    return checkpoint


def max_param_diff(a, b):
    sa, sb = a["state_dict"], b["state_dict"]
    assert sa.keys() == sb.keys()
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)
