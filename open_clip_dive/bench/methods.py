"""What the mini benchmark trains: every registry method but plain `clip`, each with its own weight grid, and the
paper's DiVE setting read both ways. A configuration is (task, method, weight, reduction, seed)."""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ..experiment import weight_flags

METHODS = ["flyp", "ce", "lp-ft", "lipsum", "car-ft", "cosine", "replay", "snd", "avl", "pvl", "dive"]
LABELS = {"flyp": "FLYP", "ce": "vanilla FT (CE)", "lp-ft": "LP-FT", "lipsum": "Lipsum-FT", "car-ft": "CAR-FT",
          "cosine": "cosine constraint", "replay": "FLYP + replay", "snd": "SnD", "avl": "FLYP + AVL",
          "pvl": "FLYP + PVL", "dive": "DiVE", "dive-paper-sum": "DiVE, paper λ (sum)",
          "dive-paper-mean": "DiVE, paper λ (mean)"}
# Initial grids, a decade apart around each loss's own default (1 for replay, Lipsum-FT and CAR-FT; the
# difference-vector and distillation losses are sums of squared unit-vector differences, ~1 at the start of a
# run's drift): selection adds a half-decade beyond an end while the best weight sits there.
DEFAULT_GRIDS: Dict[str, Tuple[float, ...]] = {
    "lipsum": (0.1, 1.0, 10.0), "car-ft": (0.1, 1.0, 10.0), "replay": (0.1, 1.0, 10.0),
    "cosine": (1.0, 10.0, 100.0), "snd": (0.1, 1.0, 10.0), "avl": (0.1, 1.0, 10.0), "pvl": (0.1, 1.0, 10.0),
    "dive": (0.1, 1.0, 10.0)}
BASELINES = ["lp-ft", "lipsum", "car-ft", "replay", "snd"]  # "the best baseline" is the best of these on val
ALWAYS_ALL_SEEDS = ["flyp", "ce", "dive"]  # and the best baseline: the rows every claim leans on
WISE_FT_METHODS = ["flyp", "ce"]  # the frontiers DiVE (its weight curve) is compared with
PAPER_WEIGHT = 1000.0
PAPER_ROWS = {"dive-paper-sum": "sum", "dive-paper-mean": "mean"}


def is_weighted(method: str) -> bool:
    return bool(weight_flags(method))


@dataclass(frozen=True)
class Config:
    task: str
    method: str  # a registry loss
    weight: Optional[float] = None
    reduction: str = "sum"
    seed: int = 0

    @property
    def name(self) -> str:
        """The run's folder: e.g. dive-w10-s0, dive-w1000-mean-s1, flyp-s2."""
        w = "" if self.weight is None else f"-w{self.weight:g}"
        r = "" if self.reduction == "sum" else f"-{self.reduction}"
        return f"{self.method}{w}{r}-s{self.seed}"

    def with_seed(self, seed: int) -> "Config":
        return Config(self.task, self.method, self.weight, self.reduction, seed)
