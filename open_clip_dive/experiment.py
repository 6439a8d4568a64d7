"""Fine-tune and evaluate on the embedded default (packaged model and data): shared by the quickstart and
the mini benchmark. Each training run is `python -m open_clip_dive.main`, each evaluation
`python -m open_clip_dive.evaluate`, as a user would type them; the exact commands are kept."""

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class Recipe:
    """Fine-tuning settings in miniature (the paper: AdamW, cosine, 500 warmup steps, lr 1e-5, wd 0.1)."""

    steps: int = 80
    batch_size: int = 32
    ref_batch_size: int = 32
    lr: float = 1e-4
    wd: float = 0.1
    warmup: int = 8
    templates: Optional[str] = None  # default: the ID task's templates.json
    workers: int = 1
    seed: int = 0
    # BatchNorm statistics frozen for every method (the paper's ViTs have none): otherwise FLYP and replay would
    # re-estimate them on Fashion-MNIST batches while the frozen-model losses keep them (--dive-bn-eval's default)
    bn_eval: bool = True
    # likewise dropout (MiniLM's text tower has 0.1): off for every method, as --dive-deterministic turns it off for
    # the frozen-model losses so that their difference vectors measure the weights' change only
    deterministic: bool = True
    device: str = "cpu"
    precision: str = "fp32"
    extra: List[str] = field(default_factory=list)


def python_env() -> dict:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run(cmd: List[str], log_path: str, commands: Optional[List[str]] = None) -> float:
    """Run a command with its output in `log_path`; raise with the log's tail when it fails."""
    if commands is not None:
        commands.append(" ".join(shlex.quote(c) for c in cmd))
    start = time.time()
    with open(log_path, "w") as log:
        result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=python_env())
    if result.returncode != 0:
        tail = open(log_path).read()[-3000:]
        raise RuntimeError(f"command failed ({result.returncode}): {' '.join(cmd)}\n--- {log_path} ---\n{tail}")
    return time.time() - start


def train_command(model_dir: str, data: dict, out_dir: str, name: str, loss: str, recipe: Recipe,
                  avl_weight: float = 0.0, pvl_weight: float = 0.0, reduction: str = "sum") -> List[str]:
    cmd = [sys.executable, "-m", "open_clip_dive.main",
           "--model", f"local-dir:{model_dir}", "--train-data", data["id_train"], "--classnames", data["classnames"],
           "--templates", recipe.templates or data["templates"], "--dataset-resampled",
           "--train-num-samples", str(recipe.steps * recipe.batch_size), "--epochs", "1",
           "--batch-size", str(recipe.batch_size), "--lr", str(recipe.lr), "--wd", str(recipe.wd),
           "--warmup", str(recipe.warmup), "--lr-scheduler", "cosine", "--precision", recipe.precision, "--device", recipe.device,
           "--workers", str(recipe.workers), "--seed", str(recipe.seed), "--logs", out_dir, "--name", name,
           "--report-to", "none", "--log-every-n-steps", "25", "--save-frequency", "1", "--loss", loss,
           "--dive-bn-eval" if recipe.bn_eval else "--no-dive-bn-eval",
           "--dive-deterministic" if recipe.deterministic else "--no-dive-deterministic"]
    if loss != "flyp":
        cmd += ["--dive-ref-data", data["reference"], "--dive-ref-batch-size", str(recipe.ref_batch_size),
                "--dive-ref-workers", str(recipe.workers)]
    if loss == "replay":
        cmd += ["--dive-replay-weight", "1"]
    elif loss in ("snd", "avl"):
        cmd += ["--dive-avl-weight", f"{avl_weight:g}"]
    elif loss == "pvl":
        cmd += ["--dive-pvl-weight", f"{pvl_weight:g}"]
    elif loss == "dive":
        cmd += ["--dive-avl-weight", f"{avl_weight:g}", "--dive-pvl-weight", f"{pvl_weight:g}"]
    if loss != "flyp" and loss != "replay" and reduction != "sum":
        cmd += ["--dive-reduction", reduction]
    return cmd + recipe.extra


def evaluate_command(model_dir: str, runs: Dict[str, str], suite: str, out_dir: str, rsa_data: str,
                     wise_ft: Optional[str] = None, max_samples: Optional[int] = None,
                     batch_size: int = 128, device: str = "cpu", precision: str = "fp32") -> List[str]:
    cmd = [sys.executable, "-m", "open_clip_dive.evaluate", "--model", f"local-dir:{model_dir}",
           "--pretrained", f"local-dir:{model_dir}", "--suite", suite, "--output-dir", out_dir,
           "--device", device, "--precision", precision, "--batch-size", str(batch_size), "--workers", "1",
           "--rsa-data", rsa_data, "--rsa-samples", "500", "--no-progress"]
    for label, checkpoint in runs.items():
        cmd += ["--finetuned", f"{label}={checkpoint}"]
    if wise_ft:
        cmd += ["--wise-ft", wise_ft]
    if max_samples:
        cmd += ["--max-samples", str(max_samples)]
    return cmd


def checkpoint_of(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, name, "checkpoints", "epoch_1.pt")
