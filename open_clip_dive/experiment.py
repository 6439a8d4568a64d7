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
    epochs: int = 1  # several short epochs: the in-training evaluation after each draws the learning curve
    eval_max_samples: Optional[int] = None  # per set of the in-training evaluation suite
    zeroshot_frequency: int = 1  # its zero-shot sets every N epochs and after the last (open_clip's flag)
    log_every: int = 25
    # BatchNorm statistics frozen for every method (the paper's ViTs have none): otherwise FLYP and replay would
    # re-estimate them on Fashion-MNIST batches while the frozen-model losses keep them (--dive-bn-eval's default)
    bn_eval: bool = True
    # likewise dropout (MiniLM's text tower has 0.1): off for every method, as --dive-deterministic turns it off for
    # the frozen-model losses so that their difference vectors measure the weights' change only
    deterministic: bool = True
    device: str = "cpu"
    precision: str = "fp32"
    fused_adamw: bool = True  # the same AdamW update, ~4x faster on CPU (speed.py)
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


def weight_flags(loss: str) -> List[str]:
    """The command-line weight flags of a registry loss (DiVE: AVL and PVL, which take one weight together)."""
    from .losses import loss_flags

    return ["--" + f.replace("_", "-") for f in loss_flags(loss) or () if f.endswith("_weight")]


def train_command(model_dir: str, data: dict, out_dir: str, name: str, loss: str, recipe: Recipe,
                  weight: Optional[float] = None, reduction: str = "sum", head_init: Optional[str] = None,
                  eval_suite: Optional[str] = None) -> List[str]:
    """`python -m open_clip_dive.main` for any registry loss on one ID task of the embedded default.

    data: id_train, classnames, templates and reference (shards / files). weight: the value of every weight flag
    the loss reads (required for those that read one). reduction: --dive-reduction for the losses that read it.
    head_init: --dive-head-init (lp-ft's linear probe). eval_suite: evaluated after every epoch (the curve)."""
    from .losses import loss_flags, loss_uses_reference

    flags = loss_flags(loss) or ()
    if recipe.steps % recipe.epochs:
        raise ValueError(f"steps {recipe.steps} is not a multiple of epochs {recipe.epochs}")
    samples = recipe.steps // recipe.epochs * recipe.batch_size
    cmd = [sys.executable, "-m", "open_clip_dive.main",
           "--model", f"local-dir:{model_dir}", "--train-data", data["id_train"], "--classnames", data["classnames"],
           "--templates", recipe.templates or data["templates"], "--dataset-resampled",
           "--train-num-samples", str(samples), "--epochs", str(recipe.epochs),
           "--batch-size", str(recipe.batch_size), "--lr", str(recipe.lr), "--wd", str(recipe.wd),
           "--warmup", str(recipe.warmup), "--lr-scheduler", "cosine", "--precision", recipe.precision, "--device", recipe.device,
           "--workers", str(recipe.workers), "--seed", str(recipe.seed), "--logs", out_dir, "--name", name,
           "--report-to", "none", "--log-every-n-steps", str(recipe.log_every), "--save-frequency", str(recipe.epochs),
           "--loss", loss,
           "--dive-bn-eval" if recipe.bn_eval else "--no-dive-bn-eval",
           "--dive-deterministic" if recipe.deterministic else "--no-dive-deterministic"]
    if recipe.fused_adamw:
        cmd += ["--dive-fused-adamw"]
    if loss_uses_reference(loss):
        cmd += ["--dive-ref-data", data["reference"], "--dive-ref-batch-size", str(recipe.ref_batch_size),
                "--dive-ref-workers", str(recipe.workers)]
    for flag in weight_flags(loss):
        if weight is None:
            raise ValueError(f"--loss {loss} reads {flag}: give its weight")
        cmd += [flag, f"{weight:g}"]
    if "dive_reduction" in flags and reduction != "sum":
        cmd += ["--dive-reduction", reduction]
    if head_init:
        cmd += ["--dive-head-init", head_init]
    if eval_suite:
        cmd += ["--dive-eval-suite", eval_suite]
        if recipe.eval_max_samples:
            cmd += ["--dive-eval-max-samples", str(recipe.eval_max_samples)]
        cmd += ["--zeroshot-frequency", str(recipe.zeroshot_frequency)]
    return cmd + recipe.extra


# flags that name files or folders (they differ from machine to machine, the training does not), logging, the
# evaluation schedule and the optimizer kernel
UNCOMPARED_FLAGS = {"model", "train_data", "classnames", "templates", "logs", "name", "dive_ref_data",
                    "dive_head_init", "dive_eval_suite", "log_every_n_steps", "zeroshot_frequency",
                    "dive_fused_adamw"}


def _flag_values(cmd: List[str]) -> Dict[str, str]:
    """--key value / --flag / --no-flag of a train command, as open_clip's params.txt spells them."""
    out, i = {}, 0
    while i < len(cmd):
        if cmd[i].startswith("--"):
            key = cmd[i][2:].replace("-", "_")
            if i + 1 < len(cmd) and not cmd[i + 1].startswith("--"):
                out[key] = cmd[i + 1]
                i += 1
            elif key.startswith("no_"):
                out[key[3:]] = "False"
            else:
                out[key] = "True"
        i += 1
    return out


def _same(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def recipe_changes(cmd: List[str], params_txt: str) -> List[str]:
    """How a finished run (its open_clip params.txt) was trained otherwise than `cmd` would train it, as
    ['--epochs 4 (now 8)', ...]; [] when the settings agree (file paths are not compared)."""
    trained = {}
    for line in open(params_txt):
        key, sep, value = line.rstrip("\n").partition(": ")
        if sep:
            trained[key] = value
    return [f"--{k.replace('_', '-')} {trained[k]} (now {v})" for k, v in _flag_values(cmd).items()
            if k not in UNCOMPARED_FLAGS and k in trained and not _same(trained[k], v)]


def linear_probe_command(model_dir: str, data: dict, output: str, max_samples: Optional[int] = None) -> List[str]:
    """The LP of LP-FT: a head fitted on frozen features of the ID train split, C chosen on its val split."""
    cmd = [sys.executable, "-m", "open_clip_dive.tools.linear_probe", "--model", f"local-dir:{model_dir}",
           "--pretrained", f"local-dir:{model_dir}", "--train-data", data["id_train"], "--val-data", data["id_val"],
           "--classnames", data["classnames"], "--output", output, "--device", "cpu", "--workers", "1"]
    return cmd + (["--max-samples", str(max_samples)] if max_samples else [])


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


def checkpoint_of(out_dir: str, name: str, epochs: int = 1) -> str:
    return os.path.join(out_dir, name, "checkpoints", f"epoch_{epochs}.pt")
