"""`python -m open_clip_dive.quickstart`: why DiVE exists, in minutes on a CPU.

Builds what is missing (the packaged pre-trained dual encoder, the packaged datasets as shards), fine-tunes it on
the ID task with FLYP and with DiVE, evaluates the pre-trained, FLYP and DiVE models on ID / OOD / zero-shot
accuracy and RSA, prints the table and writes it with plots under --output. The commands it ran are written to
<output>/commands.sh, so every step can be rerun by hand.
"""

import argparse
import json
import os
import sys
import time

from .experiment import Recipe, checkpoint_of, evaluate_command, run, train_command

# DiVE's AVL/PVL weight on this task (Fashion-MNIST): the one the mini benchmark selects on validation splits
# (docs/results/run.json: 1, interior of 0.1 / 1 / 10, scores 57.72 / 57.83 / 56.25; the paper's 1000 under
# --dive-reduction sum holds the model near the pre-trained one here, ID test 45.4 vs 82.1).
QUICKSTART_DIVE_WEIGHT = 1.0
# Sized to finish in under 10 minutes on a 2-core CPU, first-run builds included (367 s measured, README.md);
# the mini benchmark trains 160 steps on this task and evaluates 500 samples per set.
QUICKSTART_STEPS = 60
QUICKSTART_EVAL_SAMPLES = 500


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m open_clip_dive.quickstart", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="quickstart", help="where runs, results and plots go")
    p.add_argument("--steps", type=int, default=QUICKSTART_STEPS, help="fine-tuning steps per method")
    p.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    p.add_argument("--dive-weight", type=float, default=QUICKSTART_DIVE_WEIGHT,
                   help="AVL and PVL weight for the DiVE run")
    p.add_argument("--max-eval-samples", type=int, default=QUICKSTART_EVAL_SAMPLES,
                   help="evaluate the first N samples of every set (each set is stored in a seeded random order)")
    p.add_argument("--device", default="cpu", help="training and evaluation device (e.g. cuda)")
    p.add_argument("--precision", default="fp32", help="open_clip --precision of training and evaluation "
                   "(e.g. amp_bf16 on a GPU)")
    p.add_argument("--tiny", action="store_true",
                   help="a smoke run: tiny model and data built in seconds, a few steps (what the tests run)")
    return p.parse_args(argv)


TINY_SAMPLES = 64  # per set, for --tiny


def prepare(tiny: bool):
    """(model directory, data layout) of the embedded default, built on first use (cached afterwards)."""
    from .default.data import DATA_VERSION, get_default_data
    from .default.datasets import cache_root
    from .default.model import build_default_model, get_default_model_dir, relocate

    if not tiny:
        return get_default_model_dir(), get_default_data()
    root = os.path.join(cache_root(), "tiny")
    # versioned like the full build, so a cache left by older code is not read as this version's
    data = get_default_data(os.path.join(root, f"data-v{DATA_VERSION}"), limit=TINY_SAMPLES, progress=False)
    model_dir = os.path.join(root, "model")
    if not os.path.isfile(os.path.join(model_dir, "BUILD.json")):
        build_default_model(model_dir, limit=TINY_SAMPLES, recipe={"steps": 5}, progress=False)
    relocate(model_dir)
    return model_dir, data


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.output, exist_ok=True)
    start = time.time()
    print("[quickstart] preparing the packaged model and data (cached after the first run)", flush=True)
    model_dir, data = prepare(args.tiny)
    recipe = Recipe(steps=args.steps, batch_size=args.batch_size, ref_batch_size=args.batch_size, device=args.device,
                    precision=args.precision)
    commands = []
    runs_dir = os.path.join(args.output, "runs")
    checkpoints = {}
    for name, loss, weight in (("flyp", "flyp", 0.0), ("dive", "dive", args.dive_weight)):
        print(f"[quickstart] fine-tuning with {name.upper()} ({recipe.steps} steps)", flush=True)
        if os.path.exists(checkpoint_of(runs_dir, name)):
            print(f"[quickstart] {name}: reusing {checkpoint_of(runs_dir, name)}")
        else:
            os.makedirs(runs_dir, exist_ok=True)
            cmd = train_command(model_dir, data, runs_dir, name, loss, recipe, weight)
            seconds = run(cmd, os.path.join(args.output, f"train_{name}.log"), commands)
            print(f"[quickstart] {name}: {seconds:.0f} s", flush=True)
        checkpoints[name] = checkpoint_of(runs_dir, name)

    print("[quickstart] evaluating pre-trained, FLYP and DiVE (ID / OOD / zero-shot / RSA)", flush=True)
    results_dir = os.path.join(args.output, "results")
    cmd = evaluate_command(model_dir, checkpoints, data["suite"], results_dir, rsa_data="fashion-mnist",
                           max_samples=args.max_eval_samples, device=args.device, precision=args.precision)
    run(cmd, os.path.join(args.output, "evaluate.log"), commands)
    with open(os.path.join(args.output, "commands.sh"), "w") as f:
        f.write("#!/usr/bin/env bash\n# what open_clip_dive.quickstart ran\n" + "\n".join(commands) + "\n")
    print(open(os.path.join(results_dir, "results.md")).read())
    summary = json.load(open(os.path.join(results_dir, "results.json")))
    print(f"[quickstart] done in {time.time() - start:.0f} s; table and plots in {results_dir}")
    return 0 if summary else 1


if __name__ == "__main__":
    sys.exit(main())
