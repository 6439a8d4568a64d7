"""Has FLYP's ID validation accuracy levelled off? From the in-training evaluation of finished mini benchmark
sittings (work dirs) at different `--steps`, e.g. the record and FLYP-only probes:

    python -m open_clip_dive.minibench --output /tmp/p160 --steps 160 --only method=flyp   # a probe
    python benchmarks/run_length.py docs/results/work /tmp/p160/work [--json rows.json]

Per task and run length, over seeds (mean ± SE): the ID val curve (one point per epoch), two readings of
"levelled off", each judged like the page's claims (|difference| <= 1 point at 2 SE: holds / does not hold /
cannot tell):
- the last epoch's gain (the page's reading; a cosine schedule ends at lr 0, so this one is lenient);
- the doubling gain: final ID val minus the final ID val at the next shorter run length measured, paired by
  seed (same data order and prompts): whether a longer run would still buy accuracy.
"""

import argparse
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from open_clip_dive.bench.claims import PARITY  # noqa: E402
from open_clip_dive.bench.stats import fmt, judge, mean_se  # noqa: E402
from open_clip_dive.provenance import read_params  # noqa: E402

from minibench_cost import trained_steps  # noqa: E402  (this folder)


def flyp_curves(work_dirs):
    """{task: {steps: {seed: [ID val % per epoch]}}} of every finished FLYP run (all epochs evaluated)."""
    out = {}
    for work in work_dirs:
        for run in sorted(glob.glob(os.path.join(work, "*", "runs", "flyp-s*"))):
            params = read_params(os.path.join(run, "params.txt"))
            epochs, steps = int(params["epochs"]), trained_steps(params)
            curve = []
            for e in range(1, epochs + 1):
                path = os.path.join(run, "dive_eval", f"epoch_{e}", "results.json")
                if not os.path.isfile(path):
                    break
                curve.append(100 * json.load(open(path))["runs"][f"epoch_{e}"]["summary"]["id"])
            if len(curve) == epochs:
                task, seed = run.split(os.sep)[-3], int(re.search(r"-s(\d+)$", run).group(1))
                out.setdefault(task, {}).setdefault(steps, {})[seed] = curve
    return out


def rows(curves):
    """One dict per (task, steps): curve means/SEs, last-epoch gain and doubling gain with their verdicts."""
    table = []
    for task in sorted(curves):
        shorter = None
        for steps in sorted(curves[task]):
            by_seed = curves[task][steps]
            points = [mean_se(vals) for vals in zip(*by_seed.values())]
            last = mean_se([c[-1] - c[-2] for c in by_seed.values()])
            row = {"task": task, "steps": steps, "seeds": sorted(by_seed), "curve": points, "last_gain": last,
                   "last_verdict": judge(last[0], last[1], parity=PARITY), "doubling": None}
            if shorter is not None:
                before = curves[task][shorter]
                paired = [by_seed[s][-1] - before[s][-1] for s in by_seed if s in before]
                d = mean_se(paired)
                row["doubling"] = {"from": shorter, "gain": d, "verdict": judge(d[0], d[1], parity=PARITY)}
            table.append(row)
            shorter = steps
    return table


def markdown(table):
    lines = ["| task | steps | seeds | ID val after each epoch | last-epoch gain | levelled (last epoch) "
             "| gain over the shorter run | levelled (doubling) |", "|" + "---|" * 8]
    for r in table:
        curve = " → ".join(fmt(m, se) for m, se, _ in r["curve"])
        g = r["last_gain"]
        d = r["doubling"]
        dcell = (f"{fmt(d['gain'][0], d['gain'][1])} (vs {d['from']}, {d['gain'][2]} paired)", d["verdict"]) \
            if d else ("—", "—")
        lines.append(f"| {r['task']} | {r['steps']} | {len(r['seeds'])} | {curve} | {fmt(g[0], g[1], 2)} "
                     f"| {r['last_verdict']} | {dcell[0]} | {dcell[1]} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work_dirs", nargs="+", help="mini benchmark work dirs (each holds TASK/runs/flyp-sN)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    for w in args.work_dirs:
        if not os.path.isdir(w):
            p.error(f"{w}: no such work dir (give the --work-dir of a mini benchmark sitting)")
    table = rows(flyp_curves(args.work_dirs))
    if not table:
        p.error("no finished FLYP run with its whole in-training evaluation in " + ", ".join(args.work_dirs))
    print(markdown(table))
    if args.json:
        json.dump(table, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
