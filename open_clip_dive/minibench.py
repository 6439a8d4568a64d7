"""The mini benchmark: every registry method on the embedded default, plain and with WiSE-FT, at settings that
mirror the paper in miniature; writes docs/results/ (table, plots, exact commands, versions, wall time).

    python -m open_clip_dive.minibench --output docs/results        # (launch_scripts/mini_benchmark.sh)

1. Selection (validation only): DiVE with each weight of --select-weights is trained and scored on the ID
   validation split and the zero-shot *dev* splits; the weight with the best mean of the two is kept for every
   reference loss (AVL, PVL, DiVE, SnD). Test splits are not looked at until step 3.
2. Training: FLYP, AVL, PVL, DiVE, SnD and replay, same recipe, seed and data order.
3. Test: one evaluation of all runs on ID test / OOD / zero-shot test with RSA and a WiSE-FT sweep.
"""

import argparse
import json
import os
import platform
import shutil
import sys
import time

from .experiment import Recipe, checkpoint_of, evaluate_command, run, train_command

METHODS = ["flyp", "avl", "pvl", "dive", "snd", "replay"]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m open_clip_dive.minibench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="docs/results")
    p.add_argument("--work-dir", default=None, help="runs and logs (default: <output>/work, not committed)")
    p.add_argument("--steps", type=int, default=Recipe.steps)
    p.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    p.add_argument("--select-weights", default="1,10,100",
                   help="AVL/PVL weights tried on the validation split (the paper's 1000 keeps this model at its "
                        "pre-trained accuracy; docs/results/README.md)")
    p.add_argument("--wise-ft", default="0,0.5,1",
                   help="WiSE-FT mixing weights (0 and 1 reuse the plain results; 0.5 is WiSE-FT's default)")
    p.add_argument("--max-eval-samples", type=int, default=1000,
                   help="first N samples of every evaluation set (stored in a seeded random order); 0 = all")
    p.add_argument("--tiny", action="store_true", help="tiny model and data, a few steps (tests)")
    return p.parse_args(argv)


def _score(results_json: str, label: str) -> float:
    """Mean of the ID validation accuracy and the zero-shot dev average (the selection criterion)."""
    run_results = json.load(open(results_json))["runs"][label]
    id_score = [r["score"] for r in run_results["datasets"].values() if r.get("group") == "id"][0]
    zeroshot = [r["score"] for r in run_results["datasets"].values() if r.get("group") == "zeroshot"]
    return 100 * (id_score + sum(zeroshot) / len(zeroshot)) / 2


def main(argv=None) -> int:
    from .quickstart import prepare

    args = parse_args(sys.argv[1:] if argv is None else argv)
    start = time.time()
    work = args.work_dir or os.path.join(args.output, "work")
    os.makedirs(work, exist_ok=True)
    model_dir, data = prepare(args.tiny)
    recipe = Recipe(steps=args.steps, batch_size=args.batch_size, ref_batch_size=args.batch_size)
    commands = []

    def train(name, loss, weight):
        if not os.path.exists(checkpoint_of(work, name)):
            run(train_command(model_dir, data, work, name, loss, recipe, weight, weight),
                os.path.join(work, f"train_{name}.log"), commands)
        return checkpoint_of(work, name)

    # 1. select the weight on validation data
    selection, selection_runs = {}, {}
    for weight in [float(w) for w in args.select_weights.split(",")]:
        name = f"select-dive-w{weight:g}"
        ckpt = selection_runs[weight] = train(name, "dive", weight)
        out = os.path.join(work, f"eval_{name}")
        run(evaluate_command(model_dir, {name: ckpt}, data["suite_val"], out, rsa_data="fashion-mnist-val",
                             max_samples=args.max_eval_samples or None), os.path.join(work, f"eval_{name}.log"), commands)
        selection[weight] = _score(os.path.join(out, "results.json"), name)
        print(f"[minibench] selection: weight {weight:g} -> (ID val + ZS dev) / 2 = {selection[weight]:.2f}", flush=True)
    best = max(selection, key=selection.get)
    print(f"[minibench] selected weight {best:g}", flush=True)

    # 2. every method with that weight (DiVE's selection run already is the DiVE run: same command and seed)
    checkpoints = {}
    for method in METHODS:
        weight = 0.0 if method in ("flyp", "replay") else best
        checkpoints[method] = selection_runs[best] if method == "dive" else train(method, method, weight)
        print(f"[minibench] trained {method}", flush=True)

    # 3. one evaluation on the test splits, with WiSE-FT
    results = os.path.join(work, "test")
    run(evaluate_command(model_dir, checkpoints, data["suite"], results, rsa_data="fashion-mnist",
                         wise_ft=args.wise_ft, max_samples=args.max_eval_samples or None),
        os.path.join(work, "eval_test.log"), commands)

    os.makedirs(args.output, exist_ok=True)
    for name in ("results.md", "results.csv", "results.json"):
        shutil.copy(os.path.join(results, name), os.path.join(args.output, name))
    shutil.copytree(os.path.join(results, "plots"), os.path.join(args.output, "plots"), dirs_exist_ok=True)
    import open_clip
    import torch

    run_info = {"selection": {f"{k:g}": v for k, v in selection.items()}, "selected_weight": best,
                "recipe": vars(recipe), "wall_seconds": round(time.time() - start), "steps": args.steps,
                "versions": {"python": platform.python_version(), "torch": torch.__version__,
                             "open_clip": open_clip.__version__, "machine": f"{platform.machine()}, "
                             f"{os.cpu_count()} CPUs"}}
    with open(os.path.join(args.output, "run.json"), "w") as f:
        json.dump(run_info, f, indent=1)
    with open(os.path.join(args.output, "commands.sh"), "w") as f:
        f.write("#!/usr/bin/env bash\n# what open_clip_dive.minibench ran, in order\n" + "\n".join(commands) + "\n")
    print(open(os.path.join(args.output, "results.md")).read())
    print(f"[minibench] done in {time.time() - start:.0f} s -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
