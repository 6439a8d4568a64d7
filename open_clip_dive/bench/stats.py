"""The numbers a reviewer reads, as pure functions: mean and standard error over seeds, the gap to a WiSE-FT
frontier at matched ID accuracy, and whether a claim holds at the error the seeds show."""

import math
from typing import Dict, List, Optional, Sequence, Tuple

Z = 2.0  # a claim holds / fails only when the difference is more than Z standard errors from its threshold
HOLDS, FAILS, UNSURE = "holds", "does not hold", "cannot tell"


def mean_se(values: Sequence[float]) -> Tuple[Optional[float], Optional[float], int]:
    """(mean, standard error of the mean with the n-1 sample deviation, n); se is None for n < 2."""
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    if not n:
        return None, None, 0
    mean = sum(xs) / n
    if n < 2:
        return mean, None, 1
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var / n), n


def pooled_sd(groups: Sequence[Sequence[float]]) -> Optional[float]:
    """The seed-to-seed standard deviation pooled over groups of >= 2 seeds (a stand-in for a 1-seed row)."""
    ss, dof = 0.0, 0
    for g in groups:
        xs = [float(v) for v in g if v is not None]
        if len(xs) >= 2:
            m = sum(xs) / len(xs)
            ss += sum((x - m) ** 2 for x in xs)
            dof += len(xs) - 1
    return math.sqrt(ss / dof) if dof else None


def diff_se(a_se: Optional[float], b_se: Optional[float]) -> Optional[float]:
    """SE of a difference of two means from independent seeds (0 for a constant side, None if unknown)."""
    if a_se is None or b_se is None:
        return None
    return math.sqrt(a_se ** 2 + b_se ** 2)


def interpolate(curve: Sequence[Tuple[float, float]], x: float) -> Optional[float]:
    """The upper envelope of the piecewise-linear curve through `curve` (points in curve order, e.g. alpha 0..1)
    at x; None outside the x-range the curve covers (no extrapolation)."""
    best = None
    pts = list(curve)
    for (x1, y1), (x2, y2) in zip(pts, pts[1:]):
        lo, hi = min(x1, x2), max(x1, x2)
        if lo <= x <= hi:
            y = y1 if hi == lo else y1 + (y2 - y1) * (x - x1) / (x2 - x1)
            best = y if best is None else max(best, y)
    if best is None and len(pts) == 1 and pts[0][0] == x:
        best = pts[0][1]
    return best


def frontier_gap(curve: Sequence[Tuple[float, float, Optional[float]]], x: float, y: float,
                 y_se: Optional[float]) -> Optional[Dict[str, Optional[float]]]:
    """How far (x, y) lies above (+) or below (-) the frontier through `curve` [(x, y, y_se)] at the same x.
    The frontier's SE at x is interpolated linearly between its neighbours (an upper bound for correlated
    points); the x-uncertainty is not propagated. None where x is outside the frontier's range."""
    y_front = interpolate([(px, py) for px, py, _ in curve], x)
    if y_front is None:
        return None
    se_front = None
    if all(p[2] is not None for p in curve):
        se_front = interpolate([(px, pse) for px, _, pse in curve], x)
    return {"frontier": y_front, "gap": y - y_front, "se": diff_se(y_se, se_front)}


def judge(diff: Optional[float], se: Optional[float], threshold: float = 0.0, parity: Optional[float] = None) -> str:
    """holds / does not hold / cannot tell for the claim diff > threshold (or |diff| <= parity when given),
    at Z standard errors. Without an error estimate (se None) nothing can be told."""
    if diff is None or se is None:
        return UNSURE
    lo, hi = diff - Z * se, diff + Z * se
    if parity is not None:
        if -parity <= lo and hi <= parity:
            return HOLDS
        if lo > parity or hi < -parity:
            return FAILS
        return UNSURE
    if lo > threshold:
        return HOLDS
    if hi < threshold:
        return FAILS
    return UNSURE


def fmt(mean: Optional[float], se: Optional[float], digits: int = 1, borrowed: bool = False) -> str:
    if mean is None:
        return "—"
    if se is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {se:.{digits}f}" + ("‡" if borrowed else "")


def summarise(per_seed: Dict[int, float]) -> Dict[str, Optional[float]]:
    m, se, n = mean_se(list(per_seed.values()))
    return {"mean": m, "se": se, "n": n, "seeds": sorted(per_seed)}


def list_means(rows: List[Dict]) -> List[float]:
    return [r["mean"] for r in rows if r.get("mean") is not None]
