"""Choices made from validation scores, as pure functions: the grid's extension while the best weight sits at an
end, the selected weight, the best baseline, the seeds each method gets; and the parsing of --grid / --steps."""

import math
from typing import Dict, List, Optional, Sequence, Tuple

HALF_DECADE = 10 ** 0.5


def round3(x: float) -> float:
    return float(f"{x:.3g}")


def half_decade_step(w: float, direction: int) -> float:
    """w x 10^(direction / 2), landing exactly on the half-decade points (0.316 / sqrt(10) is 0.1, not 0.0999)."""
    k = 2 * math.log10(w) + direction
    if abs(k - round(k)) < 0.01:
        return round3(10 ** (round(k) / 2))
    return round3(w * HALF_DECADE ** direction)


def best_weight(scores: Dict[float, float]) -> float:
    """The weight with the highest validation score; on a tie the smaller weight (the weaker constraint)."""
    return max(sorted(scores), key=lambda w: scores[w])


def extension(scores: Dict[float, float]) -> Optional[float]:
    """The weight to add while the best is at an end of the grid (a half-decade beyond it), else None.
    A one-point grid is a fixed weight, not a selection: nothing is added."""
    if len(scores) < 2:
        return None
    grid = sorted(scores)
    best = best_weight(scores)
    if best == grid[0]:
        return half_decade_step(best, -1)
    if best == grid[-1]:
        return half_decade_step(best, +1)
    return None


def is_interior(scores: Dict[float, float]) -> bool:
    grid = sorted(scores)
    return len(grid) >= 3 and grid[0] < best_weight(scores) < grid[-1]


def best_of(scores: Dict[str, float]) -> Optional[str]:
    """The method with the highest validation score (ties: the first in the given order)."""
    return max(scores, key=lambda m: scores[m]) if scores else None


def seeds_of(method: str, n_all: int, n_rest: int, full: Sequence[str]) -> List[int]:
    """Seeds 0..n-1: n_all for the methods in `full` (FLYP, vanilla FT, DiVE, the best baseline), n_rest else."""
    return list(range(n_all if method in full else n_rest))


def parse_grid_overrides(items: Sequence[str], known: Sequence[str]) -> Dict[str, Tuple[float, ...]]:
    """['dive=1,10,100', ...] -> {method: grid}; a bad item raises ValueError naming it."""
    out = {}
    for item in items:
        method, sep, values = item.partition("=")
        if not sep or method not in known:
            raise ValueError(f"--grid '{item}': expected METHOD=W1,W2,... with METHOD one of {', '.join(known)}")
        try:
            grid = tuple(sorted({float(v) for v in values.split(",") if v.strip()}))
        except ValueError:
            grid = ()
        if not grid or any(not math.isfinite(w) or w <= 0 for w in grid):
            raise ValueError(f"--grid '{item}': the weights must be positive numbers")
        out[method] = grid
    return out


def parse_steps(spec: str) -> Tuple[int, Dict[str, int]]:
    """'80,digits=160' -> (80, {'digits': 160}): a bare number for every task, TASK=N for one; a bad item raises
    ValueError naming it."""
    default, per_task = None, {}
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        task, sep, value = item.rpartition("=")
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1 or (sep and not task):
            raise ValueError(f"--steps '{spec}': expected N or TASK=N items (positive integers), e.g. 80,digits=160")
        if sep:
            per_task[task] = n
        elif default is None:
            default = n
        else:
            raise ValueError(f"--steps '{spec}': more than one number for every task")
    if default is None:
        raise ValueError(f"--steps '{spec}': give the number of steps of every task first, e.g. 80,digits=160")
    return default, per_task
