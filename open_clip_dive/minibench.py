"""The mini benchmark: every registry method on every ID task of the embedded default, several seeds, WiSE-FT
frontiers at matched ID accuracy; writes the results page (docs/results/README.md, tables, CSV/JSON, plots,
commands.sh, run.json).

    bash launch_scripts/mini_benchmark.sh                 # = python -m open_clip_dive.minibench --output docs/results
    bash launch_scripts/mini_benchmark.sh --only method=flyp,ce,dive    # one sitting of several

1. Selection (validation only; seed 0): each weighted method is trained at every weight of its grid
   (bench/methods.py, --grid) and scored by the mean of the ID validation accuracy and the zero-shot dev
   average, read from the in-training evaluation after the last epoch. While the best weight is at an end of the
   grid a half-decade is added beyond it (--max-extensions). The paper's DiVE setting (lambda 1000, reductions
   sum and mean) is trained as named rows whatever selection picks. The best baseline is chosen on the same score.
2. Seeds: --seeds for FLYP, vanilla FT, DiVE and the best baseline, --seeds-rest for the others.
3. Test: every run on ID test / OOD / zero-shot test with RSA; WiSE-FT sweeps of FLYP and vanilla FT.
4. The page: tables per ID task (mean ± SE over seeds), the claims table, frontiers, curves.

Every finished run and evaluation is reused (a killed benchmark continues where it stopped); --only shards the
work by task / method / seed, and sittings share one --work-dir.
"""

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time

from .bench import methods as M
from .bench.plan import best_of, best_weight, extension, is_interior, parse_grid_overrides, parse_steps, seeds_of
from .bench.runner import TIME_FORMAT, Job, JobsFailed, Runner, fold_interrupted, parse_only
from .bench.tasks import tasks_of
from .errors import DiveUsageError
from .experiment import (Recipe, checkpoint_of, evaluate_command, linear_probe_command, recipe_changes,
                         train_command)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_CHUNK = 12  # fine-tuned runs per evaluation process (each also evaluates the pre-trained model once)
DEFAULT_STEPS = "160,digits=320"  # the committed docs/results/ was trained so (docs/results/run_length.md: why)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m open_clip_dive.minibench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("output")
    g.add_argument("--output", default="docs/results", help="the results page and its files")
    g.add_argument("--work-dir", default=None, help="runs, evaluations and logs (default: <output>/work); "
                   "sittings that share it reuse each other's finished jobs")
    g = p.add_argument_group("recipe (every method; the run length per task)")
    g.add_argument("--steps", default=DEFAULT_STEPS, metavar="N[,TASK=N]",
                   help="optimizer steps per run: N for every task, TASK=N for one, e.g. 80,digits=160 (default "
                        "%(default)s; docs/results/run_length.md measures how long FLYP's ID val accuracy takes to "
                        "level off on each task)")
    g.add_argument("--epochs", type=int, default=4, help="the steps split into this many short epochs; the "
                   "validation suite is evaluated after each (the learning curve; the last one selects)")
    g.add_argument("--batch-size", type=int, default=16, help="ID and reference batch size (16: the plan fits "
                   "150 min on 2 cores; the quickstart trains at 32)")
    g.add_argument("--lr", type=float, default=Recipe.lr)
    g.add_argument("--warmup", type=int, default=Recipe.warmup)
    g = p.add_argument_group("what is run")
    g.add_argument("--tasks", default=None, help="comma list of ID tasks (default: every task of the data)")
    g.add_argument("--methods", default=",".join(M.METHODS), help="comma list of registry methods")
    g.add_argument("--grid", action="append", default=[], metavar="METHOD=W1,W2,...",
                   help="a method's initial weight grid (repeat); defaults in open_clip_dive/bench/methods.py")
    g.add_argument("--max-extensions", type=int, default=2,
                   help="how often a grid may grow by a half-decade while its best weight is at an end")
    g.add_argument("--paper-weight", type=float, default=M.PAPER_WEIGHT,
                   help="the paper's lambda, trained as named DiVE rows under both reductions (0: skip)")
    g.add_argument("--seeds", type=int, default=3, help="seeds of FLYP, vanilla FT, DiVE and the best baseline")
    g.add_argument("--seeds-rest", type=int, default=1, help="seeds of every other configuration")
    g.add_argument("--wise-ft", default="0,0.25,0.5,0.75,1", help="WiSE-FT alphas of FLYP and vanilla FT")
    g.add_argument("--max-eval-samples", type=int, default=500, help="first N samples of every test set; 0 = all")
    g.add_argument("--val-samples", type=int, default=500,
                   help="first N samples of every validation set (in-training evaluation); 0 = all")
    g.add_argument("--lp-samples", type=int, default=2000, help="ID train / val samples of LP-FT's linear probe")
    g = p.add_argument_group("how it runs")
    g.add_argument("--jobs", type=int, default=2, help="runs side by side")
    g.add_argument("--threads", type=int, default=None, help="threads per run (default: CPUs / --jobs)")
    g.add_argument("--only", action="append", default=[], metavar="KEY=V1,V2",
                   help="run only the jobs of these tasks / methods / seeds (repeat: all must match), e.g. "
                        "--only method=flyp,dive --only seed=0; an evaluation runs in a sitting that covers all "
                        "its runs")
    g.add_argument("--dry-run", action="store_true", help="print what would run (the plan so far), run nothing")
    g.add_argument("--tiny", action="store_true", help="tiny model and data, a few steps (tests)")
    return p.parse_args(argv)


def check_args(args):
    try:
        args.steps_all, args.steps_of = parse_steps(args.steps)
    except ValueError as e:
        raise DiveUsageError(str(e)) from None
    if args.epochs < 1 or any(n % args.epochs for n in (args.steps_all, *args.steps_of.values())):
        raise DiveUsageError(f"--steps {args.steps} / --epochs {args.epochs}: the steps must split into whole epochs")
    if args.seeds < 1 or args.seeds_rest < 1 or args.seeds_rest > args.seeds:
        raise DiveUsageError("--seeds / --seeds-rest: need 1 <= --seeds-rest <= --seeds")
    if args.jobs < 1:
        raise DiveUsageError(f"--jobs: must be >= 1, got {args.jobs}")
    unknown = [m for m in args.methods.split(",") if m not in M.METHODS]
    if unknown:
        raise DiveUsageError(f"--methods: unknown {unknown}; known: {', '.join(M.METHODS)}")
    committed = os.path.join(REPO, "docs", "results")
    if args.tiny and os.path.abspath(args.output) == committed:
        raise DiveUsageError("--tiny would overwrite the committed docs/results/: give --output elsewhere")
    try:
        args.grids = {**M.DEFAULT_GRIDS, **parse_grid_overrides(args.grid, M.METHODS)}
    except ValueError as e:
        raise DiveUsageError(str(e)) from None
    args.only_sel = parse_only(args.only)


def _log_every(steps: int) -> int:
    return max(1, steps // 20)  # about 20 loss lines per run, whatever its length


class Bench:
    """The plan, built phase by phase from what has finished (the validation scores decide the next phase)."""

    def __init__(self, args, model_dir, layout, runner):
        self.args, self.model_dir, self.runner = args, model_dir, runner
        self.tasks = tasks_of(layout)
        if args.tasks:
            missing = [t for t in args.tasks.split(",") if t not in self.tasks]
            if missing:
                raise DiveUsageError(f"--tasks: unknown {missing}; the data has {', '.join(self.tasks)}")
            self.tasks = {t: self.tasks[t] for t in args.tasks.split(",")}
        self.reference = layout["reference"]
        self.methods = args.methods.split(",")
        self.work = runner.work
        unknown = [t for t in args.steps_of if t not in tasks_of(layout)]
        if unknown:
            raise DiveUsageError(f"--steps {args.steps}: unknown task {unknown}; the data has "
                                 f"{', '.join(tasks_of(layout))}")
        self.recipe = Recipe(steps=args.steps_all, epochs=args.epochs, batch_size=args.batch_size,
                             ref_batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                             eval_max_samples=args.val_samples or None, log_every=_log_every(args.steps_all),
                             zeroshot_frequency=args.epochs)  # the zero-shot dev sets after the last epoch only
        self.recipes = {t: dataclasses.replace(self.recipe, steps=n, log_every=_log_every(n))
                        for t, n in ((t, args.steps_of.get(t, args.steps_all)) for t in self.tasks)}
        self.selection = {}  # task -> method -> {"scores": {w: s}, "extensions": [...], "selected", "interior"}

    # --- paths and jobs -------------------------------------------------------------------------------------
    def task_dir(self, task):
        return os.path.join(self.work, task)

    def checkpoint(self, c: M.Config):
        return checkpoint_of(os.path.join(self.task_dir(c.task), "runs"), c.name, self.recipe.epochs)

    def finished_mark(self, c: M.Config):
        return os.path.join(self.task_dir(c.task), "runs", c.name, "finished.json")

    def trained(self, c: M.Config) -> bool:
        """Whether the run has finished: its mark (kept in the committed record, so a sitting on another machine
        reuses the run without its checkpoint), or its checkpoint (a run of an older pipeline: marked now)."""
        if os.path.exists(self.finished_mark(c)):
            return True
        if os.path.exists(self.checkpoint(c)):
            mark_finished(self.checkpoint(c), self.finished_mark(c))
            return True
        return False

    def lp_head(self, task):
        return os.path.join(self.task_dir(task), "lp_head.pt")

    def train_job(self, c: M.Config) -> Job:
        task = self.tasks[c.task]
        recipe = dataclasses.replace(self.recipes[c.task], seed=c.seed)
        runs = os.path.join(self.task_dir(c.task), "runs")
        head = self.lp_head(c.task) if c.method == "lp-ft" else None
        cmd = train_command(self.model_dir, {**task, "reference": self.reference}, runs, c.name, c.method, recipe,
                            c.weight, c.reduction, head_init=head, eval_suite=task["suite_val"])
        ckpt, mark = self.checkpoint(c), self.finished_mark(c)
        params = os.path.join(runs, c.name, "params.txt")
        if self.trained(c) and os.path.isfile(params):  # reused only if trained as this plan would train it
            changes = recipe_changes(cmd, params)
            if changes:
                raise DiveUsageError(f"{os.path.join(runs, c.name)} was trained with {', '.join(changes)}: the work "
                                     "dir holds runs of another recipe; give another --work-dir (or delete the run "
                                     "folders to train them again)")
        return Job(name=f"{c.task}/{c.name}", cmd=cmd, done=mark,
                   log=os.path.join(self.task_dir(c.task), "logs", f"train_{c.name}.log"),
                   tags={"task": {c.task}, "method": {c.method}, "seed": {str(c.seed)}},
                   deps=[f"{c.task}/lp-head"] if head else [], clean=os.path.join(runs, c.name),
                   after=lambda: mark_finished(ckpt, mark, slim=True))

    def lp_job(self, task) -> Job:
        cmd = linear_probe_command(self.model_dir, self.tasks[task], self.lp_head(task), self.args.lp_samples or None)
        return Job(name=f"{task}/lp-head", cmd=cmd, done=self.lp_head(task),
                   log=os.path.join(self.task_dir(task), "logs", "linear_probe.log"),
                   tags={"task": {task}, "method": {"lp-ft"}})

    def eval_job(self, task, seed, configs, wise_ft) -> Job:
        configs = list(dict.fromkeys(configs))  # a paper row may be the selected DiVE run
        names = sorted(c.name for c in configs)
        key = hashlib.sha1(("|".join(names) + f"|{wise_ft}").encode()).hexdigest()[:8]
        out = os.path.join(self.task_dir(task), "eval", f"s{seed}-{key}")
        gone = [c.name for c in configs if self.trained(c) and not os.path.exists(self.checkpoint(c))]
        if gone and not os.path.exists(os.path.join(out, "results.json")):
            raise JobsFailed(f"{task}: evaluating {', '.join(gone)} needs checkpoints that are not on this machine "
                             f"(the runs come from the committed record): delete their folders under "
                             f"{self.task_dir(task)}/runs/ to train them again")
        t = self.tasks[task]
        cmd = evaluate_command(self.model_dir, {c.name: self.checkpoint(c) for c in configs}, t["suite"], out,
                               rsa_data=t["rsa_data"], wise_ft=wise_ft, max_samples=self.args.max_eval_samples or None)
        return Job(name=f"{task}/eval-s{seed}-{key}", cmd=cmd, done=os.path.join(out, "results.json"),
                   log=os.path.join(self.task_dir(task), "logs", f"eval-s{seed}-{key}.log"),
                   tags={"task": {task}, "method": {c.method for c in configs}, "seed": {str(seed)}},
                   deps=[f"{task}/{c.name}" for c in configs], clean=out)

    # --- validation scores ------------------------------------------------------------------------------------
    def val_curve(self, c: M.Config):
        """[(epoch, ID val %, zero-shot dev avg % or None where not evaluated)] from the in-training evaluation
        (what has finished)."""
        runs = os.path.join(self.task_dir(c.task), "runs", c.name, "dive_eval")
        curve = []
        for epoch in range(1, self.recipe.epochs + 1):
            path = os.path.join(runs, f"epoch_{epoch}", "results.json")
            if os.path.isfile(path):
                s = json.load(open(path))["runs"][f"epoch_{epoch}"]["summary"]
                zs = s.get("zeroshot_avg")
                curve.append((epoch, 100 * s["id"], None if zs is None else 100 * zs))
        return curve

    def val_score(self, c: M.Config):
        """The selection criterion: (ID val + zero-shot dev average) / 2 after the last epoch; None if not run."""
        if not self.trained(c):
            return None
        curve = self.val_curve(c)
        if not curve or curve[-1][0] != self.recipe.epochs or curve[-1][2] is None:
            raise JobsFailed(f"{c.task}/{c.name} finished without its last in-training evaluation (see its log "
                             f"{self.task_dir(c.task)}/logs/train_{c.name}.log); delete its run folder to train it again")
        return (curve[-1][1] + curve[-1][2]) / 2

    # --- phases ------------------------------------------------------------------------------------------------
    def seed0_configs(self, task, method):
        if not M.is_weighted(method):
            return [M.Config(task, method)]
        return [M.Config(task, method, w) for w in self.args.grids[method]]

    def paper_configs(self, task):
        if not self.args.paper_weight or "dive" not in self.methods:
            return []
        return [M.Config(task, "dive", self.args.paper_weight, r) for r in M.PAPER_ROWS.values()]

    def select(self):
        """Phase 1: seed 0 of every grid, extended while the best weight is at an end."""
        jobs = [self.lp_job(t) for t in self.tasks if "lp-ft" in self.methods]
        grids = {(t, m): self.seed0_configs(t, m) for t in self.tasks for m in self.methods}
        jobs += [self.train_job(c) for cs in grids.values() for c in cs]
        jobs += [self.train_job(c) for t in self.tasks for c in self.paper_configs(t)]
        self.runner.run(jobs)
        for round_ in range(self.args.max_extensions + 1):
            new = []
            for (t, m), configs in grids.items():
                if not M.is_weighted(m):
                    continue
                scores = {c.weight: self.val_score(c) for c in configs}
                if any(s is None for s in scores.values()):
                    continue  # not trained yet (--only): selected in a later sitting
                entry = self.selection.setdefault(t, {}).setdefault(m, {"extensions": []})
                entry.update(scores=scores, selected=best_weight(scores), interior=is_interior(scores))
                more = extension(scores) if round_ < self.args.max_extensions else None
                if more is not None and more not in scores:
                    entry["extensions"].append(more)
                    configs.append(M.Config(t, m, more))
                    new.append(self.train_job(configs[-1]))
                    print(f"[minibench] {t}/{m}: best weight {entry['selected']:g} at an end of "
                          f"{sorted(scores)}: adding {more:g}", flush=True)
            if not new:
                break
            self.runner.run(new)
        self.grids = grids

    def selected_config(self, task, method):
        if not M.is_weighted(method):
            return M.Config(task, method) if self.trained(M.Config(task, method)) else None
        entry = self.selection.get(task, {}).get(method)
        return None if entry is None else M.Config(task, method, entry["selected"])

    def best_baseline(self, task):
        scores = {}
        for m in [m for m in M.BASELINES if m in self.methods]:
            c = self.selected_config(task, m)
            if c is None:
                return None  # not all baselines are selected yet: decided in a later sitting
            scores[m] = self.val_score(c)
        return best_of(scores)

    def reported(self, task):
        """{row: config at seed 0} of the rows that are reported, in table order."""
        rows = {}
        for m in self.methods:
            c = self.selected_config(task, m)
            if c is not None:
                rows[m] = c
        for label, c in zip(M.PAPER_ROWS, self.paper_configs(task)):
            rows[label] = c
        return rows

    def seeds_and_tests(self):
        """Phases 2 and 3: the other seeds of every reported row, then the test evaluations (grouped per seed)."""
        jobs, self.plan = [], {}
        for t in self.tasks:
            baseline = self.best_baseline(t)
            full = M.ALWAYS_ALL_SEEDS + ([baseline] if baseline else [])
            rows = self.reported(t)
            seeds = {row: seeds_of(c.method if row in self.methods else row, self.args.seeds, self.args.seeds_rest,
                                   full) for row, c in rows.items()}
            self.plan[t] = {"best_baseline": baseline, "rows": rows, "seeds": seeds}
            for row, c in rows.items():
                jobs += [self.train_job(c.with_seed(s)) for s in seeds[row] if s > 0]
            for s in range(self.args.seeds):
                wise = [c.with_seed(s) for row, c in rows.items() if row in M.WISE_FT_METHODS and s in seeds[row]]
                rest = [c.with_seed(s) for row, c in rows.items() if row not in M.WISE_FT_METHODS and s in seeds[row]]
                if s == 0:  # DiVE's weight curve: every run of its selection grid
                    rest += self.grids.get((t, "dive"), [])
                rest = list(dict.fromkeys(rest))
                if wise:
                    jobs.append(self.eval_job(t, s, wise, self.args.wise_ft))
                for i in range(0, len(rest), EVAL_CHUNK):
                    jobs.append(self.eval_job(t, s, rest[i:i + EVAL_CHUNK], None))
        self.runner.run(jobs)
        self.eval_dirs = {j.name: os.path.dirname(j.done) for j in jobs if "/eval-" in j.name}


def mark_finished(path: str, mark: str, slim: bool = False) -> None:
    """Mark a finished run (its checkpoint's size and SHA-256), first dropping the checkpoint's optimizer state if
    `slim` (two thirds of the file; the evaluation reads the weights and the loss's head only). Atomic: a kill
    leaves the full file and no mark. Nothing happens if the run left no checkpoint (the job then fails)."""
    import torch

    if not os.path.exists(path):
        return
    if slim:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if ckpt.pop("optimizer", None) is not None:
            torch.save(ckpt, path + ".tmp")
            os.replace(path + ".tmp", path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    with open(mark + ".tmp", "w") as f:
        json.dump({"checkpoint": os.path.relpath(path, os.path.dirname(mark)), "bytes": os.path.getsize(path),
                   "sha256": digest.hexdigest(), "finished": time.strftime(TIME_FORMAT)}, f)
    os.replace(mark + ".tmp", mark)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        check_args(args)
        return run(args)
    except DiveUsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except JobsFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def run(args) -> int:
    from .bench.page import write_page
    from .default.model import weights_fingerprint
    from .quickstart import prepare

    start = time.time()
    started = time.strftime(TIME_FORMAT)
    work = args.work_dir or os.path.join(args.output, "work")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    for s in ([] if args.dry_run else fold_interrupted(work)):  # a killed sitting's time still counts
        print(f"[minibench] an earlier sitting started {s['started']} was interrupted after {s['ran']} job(s) "
              f"({s['wall_s'] / 60:.1f} min to its last finished job): counted as such", flush=True)
    model_dir, layout = prepare(args.tiny)
    runner = Runner(work, jobs=args.jobs, threads=threads, only=args.only_sel, dry_run=args.dry_run, sitting=started,
                    build=weights_fingerprint(model_dir))
    bench = Bench(args, model_dir, layout, runner)
    bench.select()
    bench.seeds_and_tests()
    if args.dry_run:
        return 0
    if runner.ran:  # a sitting that trained or evaluated nothing (a dry run, a page rewrite) is not one
        with open(os.path.join(work, "sittings.jsonl"), "a") as f:
            f.write(json.dumps({"argv": sys.argv[1:], "started": started, "wall_s": round(time.time() - start, 1),
                                "ran": len(runner.ran), "jobs": args.jobs, "threads": threads,
                                "finished": time.strftime(TIME_FORMAT)}) + "\n")
    write_page(bench, args)
    if runner.skipped:
        print(f"[minibench] {len(runner.skipped)} job(s) left for another sitting (--only): "
              + ", ".join(runner.skipped[:8]) + (" ..." if len(runner.skipped) > 8 else ""))
    print(f"[minibench] ran {len(runner.ran)} job(s) in {time.time() - start:.0f} s -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
