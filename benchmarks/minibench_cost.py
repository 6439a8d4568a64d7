"""What the mini benchmark would cost at other run lengths, from a finished sitting's record: every training
job's log splits into start-up, training steps and in-training evaluation (per set, ID and zero-shot), the test
evaluations come from the ledger. Training time scales with the steps; the rest does not.

    python benchmarks/minibench_cost.py --steps 80,digits=160              # from docs/results/work
    python benchmarks/minibench_cost.py --steps 80,digits=160 --zeroshot-every-epoch
    python benchmarks/minibench_cost.py --steps 320 --step-speedup 2   # steps 2x faster than the record's

Prints minutes per task (serial job time) and the wall clock at the record's own speed-up of its side-by-side
runs (serial job time over the sittings' wall time). An estimate for the machine that ran the record.
"""

import argparse
import datetime
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from open_clip_dive.bench.plan import parse_steps  # noqa: E402
from open_clip_dive.bench.runner import read_sittings  # noqa: E402
from open_clip_dive.provenance import read_params  # noqa: E402

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d,\d\d:\d\d:\d\d) ")
EVAL = re.compile(r"\| epoch_(\d+) \| .*\[(id|zeroshot)\]: .*\(\d+ images, ([\d.]+) s\)")


def split_log(path):
    """(seconds before the first step, training seconds, ID eval seconds, zero-shot eval seconds, epochs whose
    zero-shot dev sets were scored) of one run."""
    times, ev, zs_epochs = [], {"id": 0.0, "zeroshot": 0.0}, set()
    start = None
    for line in open(path, errors="replace"):
        m = STAMP.match(line)
        if not m:
            continue
        t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d,%H:%M:%S")
        times.append(t)
        if start is None and "Start epoch 0" in line:
            start = t
        e = EVAL.search(line)
        if e:
            ev[e.group(2)] += float(e.group(3))
            if e.group(2) == "zeroshot":
                zs_epochs.add(e.group(1))
    train = (times[-1] - start).total_seconds() - ev["id"] - ev["zeroshot"]
    return (start - times[0]).total_seconds(), train, ev["id"], ev["zeroshot"], len(zs_epochs)


def trained_steps(p):
    """Optimizer steps of a finished run from its open_clip params.txt (read_params): samples per epoch / batch
    x epochs."""
    return int(p["train_num_samples"]) // int(p["batch_size"]) * int(p["epochs"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default="docs/results/work", help="a finished sitting's work dir")
    p.add_argument("--steps", required=True, help="the run length to estimate: N or N,TASK=N (as minibench's)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--zeroshot-every-epoch", action="store_true",
                   help="the zero-shot dev sets after every epoch (the 80-step record's pipeline), not after the "
                        "last only (whichever the record did, its logs say)")
    p.add_argument("--step-speedup", type=float, default=1.0,
                   help="training steps this many times faster than the record's (a code change measured side by "
                        "side, e.g. by benchmarks/speed_paths.py); evaluations keep the record's time")
    args = p.parse_args(argv)
    every, per_task = parse_steps(args.steps)
    ledger = [json.loads(x) for x in open(os.path.join(args.work_dir, "ledger.jsonl"))]
    seconds = {e["job"]: e["seconds"] for e in ledger}
    recorded, estimate = {}, {}
    for log in sorted(glob.glob(os.path.join(args.work_dir, "*", "runs", "*", "out.log"))):
        task, name = log.split(os.sep)[-4], log.split(os.sep)[-2]
        job = seconds.get(f"{task}/{name}")
        if job is None:
            continue
        before, train, ev_id, ev_zs, zs_epochs = split_log(log)
        other = job - train - ev_id - ev_zs  # process start-up, checkpoint save, the run's mark
        zs = ev_zs / max(zs_epochs, 1) * (args.epochs if args.zeroshot_every_epoch else 1)
        steps = per_task.get(task, every)
        recorded[task] = recorded.get(task, 0.0) + job
        ran = trained_steps(read_params(os.path.join(os.path.dirname(log), "params.txt")))
        estimate[task] = estimate.get(task, 0.0) + other + train * steps / ran / args.step_speedup + ev_id + zs
    for j in ledger:  # test evaluations and linear probes: independent of the run length
        if "/eval-" in j["job"] or j["job"].endswith("/lp-head"):
            task = j["job"].split("/")[0]
            recorded[task] = recorded.get(task, 0.0) + j["seconds"]
            estimate[task] = estimate.get(task, 0.0) + j["seconds"]
    wall = sum(s["wall_s"] for s in read_sittings(args.work_dir))
    speedup = sum(recorded.values()) / wall
    print(f"record: {sum(recorded.values()) / 60:.1f} job-min in {wall / 60:.1f} min wall (x{speedup:.2f} side by side)")
    for task in estimate:
        print(f"  {task}: {recorded[task] / 60:.1f} -> {estimate[task] / 60:.1f} job-min "
              f"({per_task.get(task, every)} steps)")
    total = sum(estimate.values())
    print(f"estimate at --steps {args.steps}: {total / 60:.1f} job-min, {total / speedup / 60:.1f} min wall")


if __name__ == "__main__":
    main()
