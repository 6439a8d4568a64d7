"""What the finished jobs measured, gathered per ID task: every run's test numbers, seed means ± SE per reported
row, the WiSE-FT curves, the validation curves and the ||m|| / difference-norm readings of the training logs."""

import glob
import json
import os
import re
from typing import Dict, List, Optional

from .stats import mean_se, pooled_sd

METRICS = ["id", "ood", "ood_natural", "ood_synthetic", "zs", "rsa"]
METRIC_TITLES = {"id": "ID", "ood": "OOD avg", "ood_natural": "OOD natural", "ood_synthetic": "OOD synthetic",
                 "zs": "ZS avg", "rsa": "RSA"}


def run_metrics(entry: Dict, shifts: Dict[str, str]) -> Dict[str, Optional[float]]:
    """One evaluated run (results.json's runs[label]) -> the page's numbers, in percent (RSA: Spearman)."""
    s = entry.get("summary") or {}
    data = {n: 100 * d["score"] for n, d in (entry.get("datasets") or {}).items() if d.get("score") is not None}
    out = {"id": 100 * s["id"] if s.get("id") is not None else None,
           "ood": 100 * s["ood_avg"] if s.get("ood_avg") is not None else None,
           "zs": 100 * s["zeroshot_avg"] if s.get("zeroshot_avg") is not None else None}
    for kind in ("natural", "synthetic"):
        xs = [data[n] for n, k in shifts.items() if k == kind and n in data]
        out[f"ood_{kind}"] = sum(xs) / len(xs) if xs else None
    geometry = entry.get("geometry") or {}
    out["rsa"] = geometry.get("joint", {}).get("rsa_cosine")
    out["datasets"] = data
    return out


def wise_points(points: List[Dict], shifts: Dict[str, str]) -> Dict[float, Dict]:
    return {p["alpha"]: run_metrics({"summary": p["summary"], "datasets": {n: {"score": v} for n, v in
                                                                             p["datasets"].items()}}, shifts)
            for p in points}


def load_evaluations(eval_root: str):
    """{run label: results.json entry}, {label: WiSE-FT points}, the pre-trained entry, of every finished eval."""
    runs, wise, pretrained = {}, {}, None
    for path in sorted(glob.glob(os.path.join(eval_root, "*", "results.json"))):
        data = json.load(open(path))
        for label, entry in data["runs"].items():
            if entry.get("role") == "pretrained":
                pretrained = pretrained or entry
            else:
                runs[label] = entry
        wise.update(data.get("wise_ft") or {})
    return runs, wise, pretrained


def aggregate(per_seed: Dict[int, Dict]) -> Dict[str, Dict]:
    """{seed: metrics} -> {metric: {mean, se, n, values}} (se None for one seed: see borrow_se)."""
    out = {}
    for k in METRICS:
        values = {s: m[k] for s, m in per_seed.items() if m.get(k) is not None}
        mean, se, n = mean_se(list(values.values()))
        out[k] = {"mean": mean, "se": se, "n": n, "values": values, "borrowed": False}
    names = sorted({n for m in per_seed.values() for n in m.get("datasets", {})})
    out["datasets"] = {}
    for n in names:
        mean, se, k = mean_se([m["datasets"][n] for m in per_seed.values() if n in m.get("datasets", {})])
        out["datasets"][n] = {"mean": mean, "se": se, "n": k}
    return out


def borrow_se(rows: Dict[str, Dict]) -> None:
    """A one-seed row gets the seed-to-seed deviation pooled over the task's multi-seed rows as its SE (marked
    'borrowed'): an estimate of its error, not a measurement of it."""
    for k in METRICS:
        sd = pooled_sd([list(r[k]["values"].values()) for r in rows.values() if r[k]["n"] >= 2])
        for r in rows.values():
            if r[k]["n"] == 1 and sd is not None:
                r[k]["se"], r[k]["borrowed"] = sd, True


_STEP = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+)")
_NORM = re.compile(r"dive/(ema_norm|u_norm|v_norm): ([0-9.eE+-]+)")


def norm_trace(log_path: str, batch_size: int) -> List[Dict[str, float]]:
    """[{step, ema_norm, u_norm, v_norm}] from a training log's step lines (DiVE-family runs)."""
    trace = []
    if not os.path.isfile(log_path):
        return trace
    for line in open(log_path, errors="replace"):
        m = _STEP.search(line)
        norms = dict((k, float(v)) for k, v in _NORM.findall(line))
        if m and "ema_norm" in norms:
            epoch, seen, per_epoch = (int(x) for x in m.groups())
            trace.append({"step": (epoch * per_epoch + seen) // batch_size, **norms})
    return trace
