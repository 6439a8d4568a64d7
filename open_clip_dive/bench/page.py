"""The results page: docs/results/README.md (tables per ID task in the paper's layout, mean ± SE over seeds; the
claims table; frontiers; curves; which split chose what; cost), results.json / results.csv, plots/, commands.sh,
run.json. Written from whatever has finished, so a partial benchmark gives a partial page that says so."""

import csv
import json
import os
import platform
from collections import Counter

from . import methods as M
from .claims import PARITY, judge_claims
from .collect import (METRIC_TITLES, METRICS, aggregate, borrow_se, load_evaluations, norm_trace, run_metrics,
                      wise_points)
from .frontier import FRONTIER_Y, gaps, plot_curves, plot_frontiers, wise_curve
from .runner import read_sittings
from .stats import fmt, judge, mean_se


# analysis.md is written by hand after a run (the generator never writes it): what the numbers mean, what was
# tried where a claim fails
ANALYSIS_LINK = ("**Reading of these numbers, and what was tried where a claim does not hold:** "
                 "[analysis.md](analysis.md) (by hand; its numbers are this page's, except probes it names as run "
                 "outside the record).")


def _row_label(row, config):
    w = "" if config.weight is None else f" (λ {config.weight:g})"
    return f"{M.LABELS.get(row, row)}{w}"


def task_results(bench, task, out_dir):
    """Everything the page says about one ID task, as plain data (also results.json's entry for the task)."""
    t = bench.tasks[task]
    shifts = t.get("ood_shift", {})
    runs, wise, pre_entry = load_evaluations(os.path.join(bench.task_dir(task), "eval"))
    pretrained = run_metrics(pre_entry, shifts) if pre_entry else None
    plan = bench.plan[task]
    rows, curves, missing = {}, {}, []
    for row, c in plan["rows"].items():
        per_seed = {}
        for s in plan["seeds"][row]:
            name = c.with_seed(s).name
            if name in runs:
                per_seed[s] = run_metrics(runs[name], shifts)
            else:
                missing.append(f"{task}/{name}")
            curve = bench.val_curve(c.with_seed(s))
            if curve:
                curves.setdefault(row, {})[s] = curve
        if per_seed:
            rows[row] = {**aggregate(per_seed), "config": {"method": c.method, "weight": c.weight,
                                                           "reduction": c.reduction}, "seeds": sorted(per_seed)}
    borrow_se(rows)
    frontiers = {}
    for method in M.WISE_FT_METHODS:
        c = plan["rows"].get(method)
        pts = {s: wise_points(wise[c.with_seed(s).name], shifts) for s in plan["seeds"].get(method, [])
               if c is not None and c.with_seed(s).name in wise}
        if pts:
            frontiers[M.LABELS[method]] = {y: wise_curve(pts, y) for y, _ in FRONTIER_Y}
    weight_curve = []
    for c in sorted(bench.grids.get((task, "dive"), []), key=lambda c: c.weight):
        if rows.get("dive") and c == plan["rows"]["dive"]:
            weight_curve.append((c.weight, rows["dive"]))
        elif c.name in runs:
            weight_curve.append((c.weight, aggregate({0: run_metrics(runs[c.name], shifts)})))
    dive_gaps = gaps(frontiers, rows["dive"]) if "dive" in rows else {}
    curve_gaps = {f"{w:g}": gaps(frontiers, r) for w, r in weight_curve}
    norms = {}
    if "dive" in plan["rows"]:
        for s in plan["seeds"]["dive"]:
            name = plan["rows"]["dive"].with_seed(s).name
            norms[s] = norm_trace(os.path.join(bench.task_dir(task), "runs", name, "out.log"), bench.recipe.batch_size)
    plots = plot_frontiers(task, frontiers, weight_curve, rows.get("dive"), pretrained, os.path.join(out_dir, "plots"))
    plots.update(plot_curves(task, {r: {s: [(e, i, z) for e, i, z in cv] for s, cv in v.items()}
                                    for r, v in curves.items()}, norms, os.path.join(out_dir, "plots")))
    flyp_gain = None
    if "flyp" in curves and bench.recipe.epochs >= 2:
        g = mean_se([cv[-1][1] - cv[-2][1] for cv in curves["flyp"].values() if len(cv) >= 2])
        flyp_gain = {"mean": g[0], "se": g[1], "n": g[2], "levelled_off": judge(g[0], g[1], parity=PARITY)}
    m_ratio = mean_se([tr[-1]["ema_norm"] / max(1e-12, (tr[-1]["u_norm"] + tr[-1]["v_norm"]) / 2)
                       for tr in norms.values() if tr])
    return {"task": t, "pretrained": pretrained, "rows": rows, "missing": missing, "frontiers": frontiers,
            "dive_gaps": dive_gaps, "weight_curve_gaps": curve_gaps, "weight_curve": weight_curve,
            "claims": judge_claims(rows, pretrained),
            "selection": bench.selection.get(task, {}), "best_baseline": plan["best_baseline"],
            "val_curves": curves, "flyp_last_epoch_gain": flyp_gain,
            "m_over_diff_norm": {"mean": m_ratio[0], "se": m_ratio[1], "n": m_ratio[2]},
            "norm_traces": norms, "plots": {k: os.path.relpath(v, out_dir) for k, v in plots.items()},
            "rows_config": {r: vars(c) for r, c in plan["rows"].items()}, "seeds": plan["seeds"]}


def _table(header, lines):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(x) + " |" for x in lines])


def _cell(stat, digits=1):
    return fmt(stat["mean"], stat["se"], digits, stat.get("borrowed", False))


def frontier_cells(g, curve, id_mean):
    """The frontier, gap and verdict cells of one comparison: its gap g, or, where g is None, outside_range_cells."""
    if g is None:
        return outside_range_cells(curve, id_mean)
    return [f"{g['frontier']:.1f}", fmt(g["gap"], g["se"]), judge(g["gap"], g["se"])]


def outside_range_cells(curve, id_mean):
    """Table cells for a point whose ID accuracy lies outside a frontier's ID range (curve: wise_curve's points,
    (alpha, ID, y, ...)), where there is nothing to interpolate: the range and the frontier's highest-ID end."""
    if not curve or id_mean is None:
        return ["—", "—", "—"]
    lo, hi = min(c[1] for c in curve), max(c[1] for c in curve)
    end = max(curve, key=lambda c: c[1])
    return [f"— (ID {id_mean:.1f} outside {lo:.1f}–{hi:.1f}; its end: {end[2]:.1f} at ID {hi:.1f})", "—",
            "cannot tell"]


def task_markdown(name, res, bench):
    t, rows, pre = res["task"], res["rows"], res["pretrained"]
    ood, zs = list(t["ood"]), list(t["zeroshot"])
    natural = [n for n in ood if t.get("ood_shift", {}).get(n) == "natural"]
    lines = [f"## ID task: {name}", "",
             "OOD sets: " + ", ".join(f"{n} ({t.get('ood_shift', {}).get(n, '?')})" for n in ood) + ". "
             f"Zero-shot: {', '.join(zs)} (test splits; their dev splits only enter selection).", ""]
    if res["missing"]:
        lines += [f"**Incomplete:** {len(res['missing'])} run(s) not evaluated yet: "
                  + ", ".join(res["missing"][:10]) + ("…" if len(res["missing"]) > 10 else ""), ""]
    head = ["method", "seeds", "ID"] + ood + (["OOD natural"] if natural else []) + ["OOD avg"]
    pre_line = ["pre-trained", "—", fmt(pre["id"], None)] + [fmt(pre["datasets"].get(n), None) for n in ood] + \
        ([fmt(pre["ood_natural"], None)] if natural else []) + [fmt(pre["ood"], None)] if pre else []
    body = [pre_line] if pre else []
    for row, r in rows.items():
        c = bench.plan[name]["rows"][row]
        body.append([_row_label(row, c), str(len(r["seeds"])), _cell(r["id"])]
                    + [fmt(r["datasets"].get(n, {}).get("mean"), r["datasets"].get(n, {}).get("se")) for n in ood]
                    + ([_cell(r["ood_natural"])] if natural else []) + [_cell(r["ood"])])
    lines += ["### ID and OOD (top-1 %, test splits)", "", _table(head, body), ""]
    head = ["method"] + zs + ["ZS avg", "ZS vs pre-trained", "RSA"]
    body = [["pre-trained"] + [fmt(pre["datasets"].get(n), None) for n in zs] + [fmt(pre["zs"], None), "—", "—"]] if pre else []
    for row, r in rows.items():
        dz = None if not pre or r["zs"]["mean"] is None else r["zs"]["mean"] - pre["zs"]
        body.append([_row_label(row, bench.plan[name]["rows"][row])]
                    + [fmt(r["datasets"].get(n, {}).get("mean"), r["datasets"].get(n, {}).get("se")) for n in zs]
                    + [_cell(r["zs"]), fmt(dz, r["zs"]["se"], 1, r["zs"]["borrowed"]), _cell(r["rsa"], 3)])
    lines += ["### Zero-shot (top-1 %, held-out tasks) and RSA", "", _table(head, body), "",
              "± = standard error of the mean over training seeds; ‡ = one seed, its SE borrowed from the pooled "
              "seed-to-seed deviation of this task's multi-seed rows (an estimate, not a measurement).", ""]
    lines += ["### Frontiers at matched ID accuracy", ""]
    for y, title in FRONTIER_Y:
        if y in res["plots"]:
            lines.append(f"![ID vs {title}]({res['plots'][y]})")
    body = []
    def cells(g, front, y, row):
        curve = res["frontiers"].get(front, {}).get(y) or []
        return frontier_cells(g, curve, None if row is None else row["id"]["mean"])

    for front, by_y in res["dive_gaps"].items():
        for y, g in by_y.items():
            body.append([f"DiVE (selected) vs {front} + WiSE-FT", METRIC_TITLES[y],
                         *cells(g, front, y, rows.get("dive"))])
    points = dict((f"{w:g}", r) for w, r in res.get("weight_curve", []))
    for w, by_front in res["weight_curve_gaps"].items():
        if "FLYP" in by_front:
            body.append([f"DiVE λ {w} vs FLYP + WiSE-FT", "OOD avg",
                         *cells(by_front["FLYP"].get("ood"), "FLYP", "ood", points.get(w))])
    lines += ["", "Gap = DiVE minus the frontier's piecewise-linear interpolation at DiVE's ID accuracy (positive: "
              "above the frontier); '—' where DiVE's ID accuracy is outside the frontier's range (the frontier's "
              "highest-ID end is given instead). The weight curve's λ other than the selected one are seed 0 only.", "",
              _table(["point", "metric", "frontier at DiVE's ID", "gap", "above the frontier?"], body) if body
              else "(no frontier yet)", ""]
    lines += ["### Selection (validation splits only; seed 0)", "",
              "Score = (ID val top-1 + zero-shot dev average) / 2 after the last epoch.", ""]
    body = []
    for method, e in res["selection"].items():
        grid = ", ".join(f"{w:g}: {s:.2f}" for w, s in sorted(e["scores"].items()))
        body.append([method, grid, f"{e['selected']:g}", "yes" if e["interior"] else "**no (at an end)**",
                     ", ".join(f"{w:g}" for w in e["extensions"]) or "—"])
    lines += [_table(["method", "λ: score", "selected", "interior", "added by extension"], body), "",
              f"Best baseline on the same score: **{res['best_baseline'] or 'not decided yet'}** "
              f"(of {', '.join(M.BASELINES)}): it gets the full seed count.", ""]
    lines += ["### Run length and the shared vector m", ""]
    for k in ("val_curve", "norms"):
        if k in res["plots"]:
            lines.append(f"![{k}]({res['plots'][k]})")
    g = res["flyp_last_epoch_gain"]
    if g:
        lines.append(f"\nFLYP's ID val accuracy over the last epoch: {fmt(g['mean'], g['se'], 2)} points "
                     f"(levelled off, |gain| ≤ {PARITY:g} at 2 SE: **{g['levelled_off']}**).")
    m = res["m_over_diff_norm"]
    if m["mean"] is not None:
        lines.append(f"At the end of DiVE's runs ||m|| / mean difference-vector norm = {fmt(m['mean'], m['se'], 3)} "
                     "(1 = every difference vector equals m; 0 = m has not moved).")
    lines += ["", "### Claims", "", _claims_table(res["claims"]), ""]
    fails = [c for c in res["claims"] if c["verdict"] == "does not hold"]
    if fails:
        tried = ", ".join(f"{m}: λ {', '.join(f'{w:g}' for w in sorted(e['scores']))}" for m, e in res["selection"].items())
        lines += ["Where a claim does not hold, what this benchmark tried: every λ of the grids (" + tried + "), the "
                  "paper's λ under both reductions (rows above), the natural / synthetic OOD split and the weight "
                  "curve against the frontier; what was tried beyond that is in [analysis.md](analysis.md), written by hand.",
                  ""]
    return "\n".join(lines)


def _claims_table(claims):
    body = []
    for c in claims:
        if c["diff"] is None:
            here = "—"
        else:
            digits = 3 if c["metric"] == "rsa" else 1
            b = f"{c['b']:g}" if isinstance(c["b"], float) else c["b"]
            here = (f"{c['a']} − {b} = {fmt(c['diff'], c['se'], digits)}" + ("‡" if c["se_borrowed"] else ""))
        body.append([c["claim"], c["paper"], here, f"**{c['verdict']}**"])
    return _table(["claim", "paper (ViT-B/16, ImageNet)", "here (mean ± SE)", "at this error"], body)


def _cost_table(ledger):
    """Trainings per method, evaluations and linear probes: count and mean wall seconds."""
    kinds = {}
    for j in ledger:
        name = j["job"].split("/", 1)[-1]
        kind = ("evaluation" if name.startswith("eval-") else "linear probe" if name == "lp-head"
                else "train " + next((m for m in sorted(M.METHODS, key=len, reverse=True) if name.startswith(m + "-")),
                                     name))
        kinds.setdefault(kind, []).append(j["seconds"])
    return _table(["job", "count", "mean s", "total min"],
                  [[k, str(len(v)), f"{sum(v) / len(v):.0f}", f"{sum(v) / 60:.1f}"] for k, v in sorted(kinds.items())])


def steps_note(recipes):
    """'80 steps' when every task trains as long, else e.g. '80 steps (fashion-mnist), 160 (digits)'."""
    steps = {t: r.steps for t, r in recipes.items()}
    if len(set(steps.values())) == 1:
        return f"{next(iter(steps.values()))} steps"
    return ", ".join(f"{n}{' steps' if i == 0 else ''} ({t})" for i, (t, n) in enumerate(steps.items()))


def _interrupted_note(sittings):
    n = sum(1 for s in sittings if s.get("interrupted"))
    return f" ({n} of them killed and resumed: counted up to their last finished job)" if n else ""


def _jobs(n):
    return f"{n} job{'' if n == 1 else 's'}"


def builds_note(ledger, current):
    """Which builds of the pre-trained model the record's jobs ran on (their ledger lines), against this machine's.
    Builds on two CPUs can differ in the last float bits; a record that mixes them says so."""
    counts = Counter(j.get("model") for j in ledger)
    named = sorted(((n, b) for b, n in counts.items() if b), reverse=True)
    line = f"Pre-trained model build (sha256 of its weights, 12 hex digits): {current or 'unknown'} on this machine"
    if not ledger:
        return line + "."
    if [b for _, b in named] == [current] and None not in counts:
        return line + f"; all {len(ledger)} jobs of the record ran on it."
    parts = [f"{b} ({_jobs(n)})" for n, b in named] + (
        [f"not recorded ({_jobs(counts[None])}, run before jobs noted their build)"] if None in counts else [])
    mixed = (" **The record mixes builds**: builds on different CPUs differ in the last float bits, an effect of "
             "the size of seed noise; a paired comparison across them is not exact.") if len(named) > 1 else ""
    return line + "; the record's jobs: " + ", ".join(parts) + "." + mixed


def write_page(bench, args):
    import open_clip
    import torch

    out = args.output
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    results = {t: task_results(bench, t, out) for t in bench.tasks}
    sittings = read_sittings(bench.work)
    ledger = [json.loads(x) for x in open(bench.runner.ledger)] if os.path.exists(bench.runner.ledger) else []
    wall = sum(s["wall_s"] for s in sittings)
    versions = {"python": platform.python_version(), "torch": torch.__version__, "open_clip": open_clip.__version__,
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    run_info = {"criterion": "mean of the ID validation top-1 and the zero-shot dev average after the last epoch "
                             "(seed 0); test splits are used for nothing but the reported numbers",
                "recipe": {**vars(bench.recipe), "steps": {t: r.steps for t, r in bench.recipes.items()}},
                "args": {k: v for k, v in vars(args).items() if k != "only_sel"},
                "selection": {t: {m: {**e, "scores": {f"{w:g}": s for w, s in e["scores"].items()}}
                                  for m, e in r["selection"].items()} for t, r in results.items()},
                "best_baseline": {t: r["best_baseline"] for t, r in results.items()},
                "seeds": {t: r["seeds"] for t, r in results.items()}, "wall_seconds": round(wall),
                "sittings": sittings, "job_seconds": sum(j["seconds"] for j in ledger), "versions": versions,
                "model_build": bench.runner.build}
    with open(os.path.join(out, "run.json"), "w") as f:
        json.dump(run_info, f, indent=1, default=str)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({t: {k: v for k, v in r.items() if k != "task"} for t, r in results.items()}, f, indent=1,
                  default=str)
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "row", "method", "weight", "reduction", "seeds"]
                   + [f"{k}_{s}" for k in METRICS for s in ("mean", "se")])
        for t, r in results.items():
            for row, x in r["rows"].items():
                w.writerow([t, row, x["config"]["method"], x["config"]["weight"], x["config"]["reduction"],
                            len(x["seeds"])] + [x[k][s] for k in METRICS for s in ("mean", "se")])
    with open(os.path.join(out, "commands.sh"), "w") as f:
        f.write("#!/usr/bin/env bash\n# every job of open_clip_dive.minibench, in plan order (run or reused)\n"
                "set -euo pipefail\n" + "\n".join(bench.runner.commands) + "\n")
    complete = not any(r["missing"] for r in results.values()) and not bench.runner.skipped
    seeds_note = (f"{args.seeds} seeds for every row" if args.seeds_rest == args.seeds else
                  f"{args.seeds} seeds for FLYP, vanilla FT, DiVE and the best baseline; {args.seeds_rest} for the "
                  "rest (the budget: 150 min on 2 cores), whose SE is borrowed (‡)")
    r = bench.recipe
    parts = ["# Mini benchmark: the paper's claims on the embedded default", "",
             ("" if complete else "> **Partial:** some runs or evaluations have not finished (other `--only` "
              "sittings); the numbers below are what has.\n"),
             f"Produced by `bash launch_scripts/mini_benchmark.sh` (`python -m open_clip_dive.minibench`) in "
             f"{len(sittings)} sitting(s){_interrupted_note(sittings)}, **{wall / 60:.1f} min** wall-clock in all "
             f"({args.jobs} runs side by side, "
             f"{bench.runner.threads} thread(s) each); every command is in `commands.sh`, settings and selection "
             "scores in `run.json`, every number in `results.json` / `results.csv`, plots in `plots/`.", "",
             *([ANALYSIS_LINK, ""] if os.path.isfile(os.path.join(out, "analysis.md")) else []),
             "## Setup", "",
             f"- Recipe, every method: {steps_note(bench.recipes)} in {r.epochs} epochs, batch {r.batch_size} ID + "
             f"{r.ref_batch_size} reference, AdamW lr {r.lr:g}, wd {r.wd:g}, cosine, {r.warmup} warmup steps, fp32, "
             "BatchNorm statistics and dropout frozen for every method.",
             f"- Seeds: {seeds_note}. A seed changes the data order, the prompts, the augmentation and the "
             "reference stream.",
             f"- Test sets: the first {args.max_eval_samples or 'all'} samples of each; validation sets: the first "
             f"{args.val_samples or 'all'}. Claims are judged at 2 SE: holds / does not hold / cannot tell.", "",
             "## Which split chose what", "",
             _table(["choice", "chosen on"], [
                 ["λ of every weighted method (grid, extension)", "ID val + zero-shot dev, seed 0"],
                 ["the best baseline (gets all seeds)", "the same score"],
                 ["LP-FT's linear-probe C", "ID val (tools.linear_probe)"],
                 ["run length per task (`--steps`)", "by hand before the sitting (FLYP's ID val curves at several "
                  "run lengths: run_length.md)"],
                 ["recipe, grids, WiSE-FT alphas", "fixed before the run (not tuned)"],
                 ["test splits (ID test, OOD, zero-shot test)", "nothing: reported only"]]), ""]
    parts += [task_markdown(t, res, bench) for t, res in results.items()]
    parts += ["## Cost (measured: every job's wall time, <work>/ledger.jsonl)", "", _cost_table(ledger), "",
              f"Job time {sum(j['seconds'] for j in ledger) / 60:.1f} min over {len(ledger)} jobs, {args.jobs} at a "
              f"time: {wall / 60:.1f} min wall-clock. Niced or shared-machine sittings read slower than an idle one.",
              ""]
    parts += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in versions.items()), "",
              builds_note(ledger, bench.runner.build), ""]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(parts))
    return results
