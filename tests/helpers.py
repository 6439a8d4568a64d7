"""Shared test fixtures: a tiny open_clip model config and generated WebDataset shards."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import webdataset as wds
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_MODEL = "dive-tiny"

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def write_tiny_model_config(directory: str) -> str:
    """A JSON config whose stem is the model name, for open_clip.add_model_config / --dive-model-config."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{TINY_MODEL}.json")
    with open(path, "w") as f:
        json.dump(TINY_MODEL_CFG, f)
    return path


def _image(rng: np.random.Generator, label: int, size: int) -> bytes:
    """Distinct images whose mean colour depends on the label, so a model can learn the task."""
    base = np.zeros((size, size, 3), np.float32)
    base[..., label % 3] = 120 + 15 * (label // 3)
    base[: size // 2, :, (label + 1) % 3] += 40 * (label % 2)
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(directory, prefix="shard", num_shards=2, per_shard=16, num_classes=4, size=32,
                 with_cls=True, with_txt=False, seed=0, extra=None):
    """Write `prefix-000000.tar ...` + sizes.json + classnames.json; returns the brace pattern."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = COLOURS[:num_classes]
    sizes = {}
    for s in range(num_shards):
        name = f"{prefix}-{s:06d}.tar"
        with wds.TarWriter(os.path.join(directory, name)) as sink:
            for j in range(per_shard):
                label = int(rng.integers(num_classes))
                sample = {"__key__": f"{prefix}{s:03d}_{j:05d}", "png": _image(rng, label, size)}
                if with_cls:
                    sample["cls"] = str(label).encode()
                if with_txt:
                    sample["txt"] = f"a picture of something {names[label]} number {j}".encode()
                if extra:
                    sample.update(extra(s, j, label))
                sink.write(sample)
        sizes[name] = per_shard
    with open(os.path.join(directory, "sizes.json"), "w") as f:
        json.dump(sizes, f)
    with open(os.path.join(directory, "classnames.json"), "w") as f:
        json.dump(names, f)
    return os.path.join(directory, f"{prefix}-{{{0:06d}..{num_shards - 1:06d}}}.tar")


def dive_cli_argv(tiny_data, shards, logs, name, *extra):
    """`python -m open_clip_dive.main` for 2 epochs of DiVE on the tiny model (the preemption and signal tests)."""
    return [sys.executable, "-m", "open_clip_dive.main", "--dive-model-config", tiny_data["config"],
            "--model", TINY_MODEL, "--train-data", shards, "--classnames", tiny_data["classnames"],
            "--batch-size", "4", "--epochs", "2", "--device", "cpu", "--precision", "fp32", "--workers", "0",
            "--lr", "1e-3", "--warmup", "2", "--logs", str(logs), "--name", name, "--report-to", "none",
            "--log-every-n-steps", "1", "--seed", "0", "--loss", "dive", "--dive-ref-data", tiny_data["ref"],
            "--dive-ref-batch-size", "4", "--dive-avl-weight", "10", "--dive-pvl-weight", "10", *extra]


def subprocess_env(**extra):
    env = dict(os.environ)
    # DIVE_TEST_OPEN_CLIP_PATH: a patched open_clip (scripts/check_patches.sh --test) comes first on the path
    paths = [p for p in (os.environ.get("DIVE_TEST_OPEN_CLIP_PATH"), REPO) if p]
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join(paths))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_module(module, args, cwd, timeout=600, env=None, launcher=None):
    """Run `python -m module args` (or `launcher ... -m module args`); returns CompletedProcess."""
    cmd = (launcher or [sys.executable]) + ["-m", module] + [str(a) for a in args]
    return subprocess.run(cmd, cwd=cwd, env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout)


test_env = subprocess_env  # older name
test_env.__test__ = False  # not a test when imported into a test module
