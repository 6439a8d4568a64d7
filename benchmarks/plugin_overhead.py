"""The plugin's overhead in FLYP mode: `open_clip_dive.main --loss flyp` against `open_clip_train.main`.

Both trainers run as subprocesses on the same generated shards: every sample holds the image, its class
index (`cls`, read by the plugin with `--classnames ... --templates photo`) and the prompt the plugin makes
from it, "a photo of a {class}." (`txt`, read by open_clip as the caption), so both train on identical
image-text pairs. Same model, batch size, steps, seed, `--workers 0`, `--precision fp32`,
`--log-every-n-steps 1`. Runs alternate A B B A A B ... Step times come from the logs: "Batch (t)" of every
step (taken from the samples/s figure, 6 significant digits), and the compute part "Batch (t) - Data (t)".
The first `--skip` steps of every run are dropped (warm-up).

On a shared machine the wall clock of whole runs is at the mercy of other jobs, so the script also compares
the two training loops in one process (`--loop-turns`): open_clip_train.train.train_one_epoch against
open_clip_dive.train.train_one_epoch (`--loss flyp`, the plugin's real Run), on one model and optimizer, fed
the same in-memory batch, alternating turns, timed per step with this process's CPU time (1 thread).

    python benchmarks/plugin_overhead.py --steps 40 --pairs 3
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REPO, machine_description, markdown_table, median, quartiles, relative_iqr  # noqa: E402

import numpy as np  # noqa: E402

CLASSNAMES = ["goldfish", "tabby cat", "fire truck", "acoustic guitar", "daisy", "espresso", "tree frog", "yurt"]
# A small CLIP, so that a CPU step is long against the log line's resolution and short enough for many steps.
SMALL_MODEL_CFG = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 256, "head_width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4},
}
TINY_MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
HEADERS = ["trainer", "runs", "steps timed", "step ms (median)", "IQR ms", "compute ms (batch - data)",
           "data ms", "samples/s"]
LOOP_HEADERS = ["loop", "steps timed", "step ms (median, CPU time)", "relative IQR"]
LINE = re.compile(r"Data \(t\): (?P<data>[0-9.]+) Batch \(t\): (?P<batch>[0-9.]+), (?P<sps>[0-9.e+]+)/s")


def write_shards(directory, num_samples, num_shards, image_size, seed=0):
    """Shards whose samples carry png + cls + txt ("a photo of a {class}."): one dataset for both trainers."""
    from open_clip_dive.tools.make_shards import write_array_shards

    rng = np.random.default_rng(seed)
    per_shard = num_samples // num_shards
    labels = rng.integers(len(CLASSNAMES), size=per_shard * num_shards)
    images = [np.clip(rng.normal(40 + 20 * int(label), 40, (image_size, image_size, 3)), 0, 255).astype(np.uint8)
              for label in labels]
    captions = [f"a photo of a {CLASSNAMES[label]}." for label in labels]
    return write_array_shards(images, labels, CLASSNAMES, directory, captions=captions, prefix="data",
                              shard_size=per_shard, image_format="png", progress=False).pattern


def model_dir(root, cfg):
    path = os.path.join(root, "model")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": cfg, "preprocess_cfg": {}}, f)
    return path


def parse_steps(log_path, batch_size):
    """(batch seconds, data seconds) of every logged step, in order."""
    steps = []
    with open(log_path) as f:
        for line in f:
            m = LINE.search(line)
            if m:
                batch = batch_size / float(m["sps"]) if float(m["sps"]) > 0 else float(m["batch"])
                steps.append((batch, float(m["data"])))
    return steps


class InMemoryLoader:
    """The same (images, texts) batch `steps` times; the time of every loop iteration (between two next() calls)."""

    def __init__(self, batch, steps, clock):
        self.batch, self.steps, self.clock = batch, steps, clock
        self.num_batches = 10**9  # for the loops' logging only: large, so only step 0 of a turn logs
        self.num_samples = 10**9
        self.times = []

    def __iter__(self):
        start = self.clock()
        for _ in range(self.steps):
            yield self.batch
            now = self.clock()
            self.times.append(now - start)
            start = now


def compare_loops(cfg, batch_size, turns, steps_per_turn, threads, log):
    """(open_clip step times, plugin step times, per-turn-pair ratios): both loops in this process, alternating."""
    import open_clip
    import torch
    from open_clip_train import train as oc_train
    from open_clip_train.data import DataInfo
    from open_clip_train.params import parse_args as upstream_parse_args
    from open_clip_train.scheduler import cosine_lr

    from open_clip_dive import train as dive_train
    from open_clip_dive.losses import create_loss
    from open_clip_dive.params import parse_args
    from open_clip_dive.plugin import Run

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    name = "dive-bench-overhead"
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, f"{name}.json"), "w") as f:
            json.dump(cfg, f)
        open_clip.add_model_config(os.path.join(d, f"{name}.json"))
    argv = ["--model", name, "--batch-size", str(batch_size), "--precision", "fp32", "--device", "cpu", "--lr", "1e-5",
            "--warmup", "1", "--log-every-n-steps", str(10**9), "--report-to", "", "--loss", "flyp",
            "--dive-preempt-signals", "none"]
    args = parse_args(argv, upstream_parse_args)
    args.world_size, args.rank, args.local_rank, args.distributed = 1, 0, 0, False
    args.wandb = args.tensorboard = args.distill = False
    model = open_clip.create_model(name, pretrained=None, output_dict=True)
    upstream_loss = open_clip.create_loss(args)  # what open_clip_train.main builds
    plugin_loss = create_loss(args)  # the registry's flyp
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd)
    scheduler = cosine_lr(optimizer, args.lr, 1, 10**9)
    tokenizer = open_clip.get_tokenizer(name)
    size = cfg["vision_cfg"]["image_size"]
    batch = (torch.randn(batch_size, 3, size, size),
             tokenizer([f"a photo of a {CLASSNAMES[i % len(CLASSNAMES)]}." for i in range(batch_size)]))
    clock = time.process_time

    def turn(kind):
        loader = InMemoryLoader(batch, steps_per_turn, clock)
        data = {"train": DataInfo(dataloader=loader)}
        if kind == "open_clip":
            oc_train.train_one_epoch(model, data, upstream_loss, 0, optimizer, None, scheduler, None, args)
        else:
            dive_train.train_one_epoch(model, data, plugin_loss, 0, optimizer, None, scheduler, None, args, Run(args))
        return loader.times[1:] if len(loader.times) > 1 else loader.times  # step 0 of a turn logs: dropped

    turn("open_clip"), turn("plugin")  # warm-up
    times = {"open_clip": [], "plugin": []}
    ratios = []
    for t in range(turns):
        order = ["open_clip", "plugin"] if t % 2 == 0 else ["plugin", "open_clip"]
        this = {kind: turn(kind) for kind in order}
        for kind in order:
            times[kind] += this[kind]
        ratios.append(median(this["plugin"]) / median(this["open_clip"]))
    log(f"in-process loops: {turns} turn pairs done")
    return times["open_clip"], times["plugin"], ratios


def run_trainer(kind, common, shards, classnames, logs, name, env, timeout):
    if kind == "open_clip":
        cmd = [sys.executable, "-m", "open_clip_train.main", "--train-data", shards, "--dataset-type", "webdataset"]
    else:
        cmd = [sys.executable, "-m", "open_clip_dive.main", "--loss", "flyp", "--train-data", shards,
               "--classnames", classnames, "--templates", "photo"]
    cmd += common + ["--logs", logs, "--name", name]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=logs)
    if result.returncode != 0:
        raise RuntimeError(f"{kind} run failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return os.path.join(logs, name, "out.log")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="small", choices=["small", "tiny"],
                   help="small: 4+4 layers of width 256 at 64 px; tiny: the test-suite's model.")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=40, help="Steps per run (one epoch).")
    p.add_argument("--pairs", type=int, default=3, help="Runs of each trainer, alternating A B B A A B ...")
    p.add_argument("--skip", type=int, default=3, help="Warm-up steps dropped from every run.")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the runs.")
    p.add_argument("--timeout", type=int, default=900, help="Seconds per run.")
    p.add_argument("--loop-turns", type=int, default=10,
                   help="Turn pairs of the in-process loop comparison (0: skip it).")
    p.add_argument("--loop-steps", type=int, default=5, help="Steps per turn of the in-process comparison.")
    p.add_argument("--markdown", default=None, help="Also write the output here.")
    a = p.parse_args(argv)
    if a.steps <= a.skip:
        p.error("--steps must be larger than --skip")

    started = time.time()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # this process's own torch (the in-process comparison) too
    cfg = SMALL_MODEL_CFG if a.model == "small" else TINY_MODEL_CFG
    with tempfile.TemporaryDirectory(prefix="dive-overhead-") as root:
        num_samples = a.steps * a.batch_size
        shards = write_shards(os.path.join(root, "data"), num_samples, 2, cfg["vision_cfg"]["image_size"])
        classnames = os.path.join(root, "data", "classnames.json")
        logs = os.path.join(root, "logs")
        os.makedirs(logs)
        common = ["--model", f"local-dir:{model_dir(root, cfg)}", "--batch-size", str(a.batch_size), "--epochs", "1",
                  "--device", a.device, "--precision", "fp32", "--workers", "0", "--lr", "1e-5", "--warmup", "1",
                  "--log-every-n-steps", "1", "--seed", "0", "--report-to", "", "--save-frequency", "0",
                  "--train-num-samples", str(num_samples)]
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(a.threads), PYTHONPATH=REPO)
        if a.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        order = []
        for i in range(a.pairs):
            order += ["open_clip", "plugin"] if i % 2 == 0 else ["plugin", "open_clip"]
        steps = {"open_clip": [], "plugin": []}
        per_run = {"open_clip": [], "plugin": []}
        for i, kind in enumerate(order):
            log = run_trainer(kind, common, shards, classnames, logs, f"{kind}-{i}", env, a.timeout)
            s = parse_steps(log, a.batch_size)[a.skip:]
            if not s:
                raise RuntimeError(f"no step lines in {log}")
            steps[kind] += s
            per_run[kind].append(median([b for b, _ in s]))
            print(f"run {i + 1}/{len(order)} {kind}: {len(s)} steps, median {1000 * per_run[kind][-1]:.1f} ms",
                  file=sys.stderr, flush=True)

    rows, med = [], {}
    for kind in ("open_clip", "plugin"):
        batch = [b for b, _ in steps[kind]]
        compute = [b - d for b, d in steps[kind]]
        data = [d for _, d in steps[kind]]
        q1, q3 = quartiles(batch)
        med[kind] = (median(batch), median(compute))
        label = "open_clip_train.main" if kind == "open_clip" else "open_clip_dive.main --loss flyp"
        rows.append([label, len(per_run[kind]), len(batch), f"{1000 * median(batch):.1f}",
                     f"{1000 * q1:.1f}-{1000 * q3:.1f}", f"{1000 * median(compute):.1f}", f"{1000 * median(data):.1f}",
                     f"{a.batch_size / median(batch):.1f}"])
    pair_ratios = [pl / oc for oc, pl in zip(per_run["open_clip"], per_run["plugin"])]
    ratio, compute_ratio = med["plugin"][0] / med["open_clip"][0], med["plugin"][1] / med["open_clip"][1]
    noise = max(relative_iqr([b for b, _ in steps[k]]) for k in steps)
    out = [f"Machine: {machine_description(a.device)}", "",
           f"Plugin overhead in FLYP mode ({a.model} model, batch {a.batch_size}, {a.steps} steps per run, first "
           f"{a.skip} dropped, {a.device}, fp32, --workers 0, OMP_NUM_THREADS={a.threads}):", "",
           markdown_table(HEADERS, rows), "",
           f"step time ratio plugin/open_clip: {ratio:.3f} (per run pair: "
           f"{', '.join(f'{r:.3f}' for r in pair_ratios)}); compute-only ratio: {compute_ratio:.3f}; "
           f"noise (relative IQR of steps): {100 * noise:.0f}%",
           f"target: <= 1.02; {'met' if ratio <= 1.02 else 'not met'} on this run"
           + (" (within noise)" if abs(ratio - 1) <= noise / 2 else ""),
           f"Wall time: {time.time() - started:.0f} s"]
    if a.loop_turns > 0:
        oc, pl, ratios = compare_loops(cfg, a.batch_size, a.loop_turns, a.loop_steps, a.threads,
                                       lambda m: print(m, file=sys.stderr, flush=True))
        q = quartiles(ratios)
        loop_ratio = median(pl) / median(oc)
        out[-2:] = []  # the target and wall-time lines go after both measurements
        out += ["", f"In-process loops (open_clip_train.train.train_one_epoch vs open_clip_dive.train.train_one_epoch, "
                f"same model, optimizer and in-memory batch; CPU time, {a.threads} thread(s); {a.loop_turns} turn "
                f"pairs x {a.loop_steps} steps, first step of each turn dropped):", "",
                markdown_table(LOOP_HEADERS, [
                    ["open_clip_train.train.train_one_epoch", len(oc), f"{1000 * median(oc):.2f}",
                     f"{100 * relative_iqr(oc):.1f}%"],
                    ["open_clip_dive.train.train_one_epoch", len(pl), f"{1000 * median(pl):.2f}",
                     f"{100 * relative_iqr(pl):.1f}%"]]), "",
                f"loop step ratio plugin/open_clip: {loop_ratio:.3f} (per turn pair: median "
                f"{median(ratios):.3f}, IQR {q[0]:.3f}-{q[1]:.3f})",
                f"target <= 1.02: whole runs (wall) {ratio:.3f} ({'met' if ratio <= 1.02 else 'not met'}), "
                f"loops (CPU) {loop_ratio:.3f} ({'met' if loop_ratio <= 1.02 else 'not met'})",
                f"Wall time: {time.time() - started:.0f} s"]
    text = "\n".join(out)
    print(text, flush=True)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
