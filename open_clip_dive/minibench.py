"""The mini benchmark: every registry method on the embedded default, plain and with WiSE-FT, at settings that
mirror the paper in miniature; writes docs/results/ (table, plots, exact commands, versions, wall time).

    python -m open_clip_dive.minibench --output docs/results        # (launch_scripts/mini_benchmark.sh)

1. Selection (validation only): DiVE with each weight of --select-weights (half-decades from 0.1 to 1000) is
   trained and scored on the ID validation split and the zero-shot *dev* splits; the weight with the best mean
   of the two is kept for every reference loss (AVL, PVL, DiVE, SnD). If the best weight is at an end of the
   grid, the grid is extended by half-decades on that side until it is interior. Test splits are not looked at
   until step 3.
2. Training: FLYP, AVL, PVL, DiVE, SnD and replay, same recipe, seed and data order; and the paper's own
   setting read both ways, weight 1000 with `--dive-reduction sum` and `mean`, as named rows.
3. Test: one evaluation of all runs on ID test / OOD / zero-shot test with RSA and a WiSE-FT sweep.

Every finished run (checkpoint, evaluation) is reused, so a killed benchmark continues where it stopped.
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time

from .experiment import Recipe, checkpoint_of, evaluate_command, run, train_command

METHODS = ["flyp", "avl", "pvl", "dive", "snd", "replay"]


def _round3(x: float) -> float:
    return float(f"{x:.3g}")


def _half_decade(k: int) -> float:
    return _round3(10 ** (k / 2))


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m open_clip_dive.minibench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="docs/results")
    p.add_argument("--work-dir", default=None, help="runs and logs (default: <output>/work, not committed)")
    p.add_argument("--steps", type=int, default=Recipe.steps)
    p.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    p.add_argument("--select-weights", default=",".join(f"{_half_decade(k):g}" for k in range(-2, 7)),
                   help="AVL/PVL weights tried on the validation split (default: 0.1 ... 1000 by half-decades); "
                        "extended by half-decades while the best is at an end")
    p.add_argument("--max-extensions", type=int, default=3, help="how often the grid may be extended")
    p.add_argument("--paper-weight", type=float, default=1000.0,
                   help="the paper's lambda, trained as named rows under both reductions (0: skip)")
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

    def once(cmd, log, done):
        """Run `cmd` unless its output exists (a resumed benchmark reuses it); commands.sh lists it either way."""
        commands.append(" ".join(shlex.quote(c) for c in cmd))
        if not os.path.exists(done):
            run(cmd, log)

    def train(name, loss, weight, reduction="sum"):
        once(train_command(model_dir, data, work, name, loss, recipe, weight, weight, reduction),
             os.path.join(work, f"train_{name}.log"), checkpoint_of(work, name))
        return checkpoint_of(work, name)

    def evaluate(name, checkpoints, suite, rsa_data, **kw):
        out = os.path.join(work, f"eval_{name}")
        once(evaluate_command(model_dir, checkpoints, suite, out, rsa_data=rsa_data,
                              max_samples=args.max_eval_samples or None, **kw),
             os.path.join(work, f"eval_{name}.log"), os.path.join(out, "results.json"))
        return os.path.join(out, "results.json")

    # 1. select the weight on validation data; extend the grid while the best weight is at an end of it
    weights = sorted(float(w) for w in args.select_weights.split(","))
    selection, selection_runs, extensions = {}, {}, []
    for round_ in range(args.max_extensions + 1):
        new = [w for w in weights if w not in selection]
        runs = {f"select-dive-w{w:g}": train(f"select-dive-w{w:g}", "dive", w) for w in new}
        selection_runs.update(zip(new, runs.values()))
        results = evaluate(f"select-{round_}", runs, data["suite_val"], "fashion-mnist-val")
        for w in new:
            selection[w] = _score(results, f"select-dive-w{w:g}")
            print(f"[minibench] selection: weight {w:g} -> (ID val + ZS dev) / 2 = {selection[w]:.2f}", flush=True)
        best = max(selection, key=selection.get)
        grid = sorted(selection)
        if grid[0] < best < grid[-1] or round_ == args.max_extensions:
            break
        step = 10 ** 0.5
        weights = grid + [_round3(best / step if best == grid[0] else best * step)]
        extensions.append(weights[-1])
        print(f"[minibench] best weight {best:g} is at the end of the grid: adding {weights[-1]:g}", flush=True)
    interior = sorted(selection)[0] < best < sorted(selection)[-1]
    print(f"[minibench] selected weight {best:g}" + ("" if interior else " (still at the end of the grid)"),
          flush=True)

    # 2. every method with that weight (DiVE's selection run already is the DiVE run: same command and seed)
    checkpoints = {}
    for method in METHODS:
        weight = 0.0 if method in ("flyp", "replay") else best
        checkpoints[method] = selection_runs[best] if method == "dive" else train(method, method, weight)
        print(f"[minibench] trained {method}", flush=True)
    if args.paper_weight:
        for reduction in ("sum", "mean"):
            label = f"dive-paper-{reduction}"
            w = args.paper_weight
            checkpoints[label] = (selection_runs[w] if reduction == "sum" and w in selection_runs
                                  else train(label, "dive", w, reduction))
            print(f"[minibench] trained {label} (weight {w:g}, --dive-reduction {reduction})", flush=True)

    # 3. one evaluation on the test splits, with WiSE-FT
    results = os.path.dirname(evaluate("test", checkpoints, data["suite"], "fashion-mnist", wise_ft=args.wise_ft))

    os.makedirs(args.output, exist_ok=True)
    for name in ("results.md", "results.csv", "results.json"):
        shutil.copy(os.path.join(results, name), os.path.join(args.output, name))
    shutil.copytree(os.path.join(results, "plots"), os.path.join(args.output, "plots"), dirs_exist_ok=True)
    import open_clip
    import torch

    run_info = {"criterion": "mean of the ID validation accuracy and the zero-shot dev average (test splits unused)",
                "selection": {f"{k:g}": v for k, v in sorted(selection.items())}, "selected_weight": best,
                "selected_is_interior": interior, "grid_extensions": extensions,
                "paper_rows": {f"dive-paper-{r}": {"weight": args.paper_weight, "reduction": r}
                               for r in ("sum", "mean")} if args.paper_weight else {},
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
