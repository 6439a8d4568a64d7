"""Classification metrics and the logit projections that the ImageNet shifts need.

- `project_logits`: a dataset class scored from one head column (ImageNet-R/-A: the 200-class subset of the
  1000-way head) or from the max over several (ObjectNet: each of its 113 classes max-pools the logits of the
  ImageNet classes mapped to it), as WiSE-FT / FLYP evaluate them.
- `macro_f1`: the mean F1 over the classes present in the ground truth (the WILDS convention for iWildCam;
  equals scikit-learn's `f1_score(y, p, average="macro", labels=np.unique(y))`).
"""

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch


def groups_index(groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """[C, G] index matrix, rows padded by repeating their first index (harmless under max)."""
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError("every dataset class needs at least one head index")
    width = max(len(g) for g in groups)
    return torch.tensor([list(g) + [g[0]] * (width - len(g)) for g in groups], dtype=torch.long)


def project_logits(logits: torch.Tensor, groups: Optional[Sequence[Sequence[int]]]) -> torch.Tensor:
    """[N, H] head logits -> [N, C] dataset-class logits; groups[c] are the head columns of class c (max-pooled)."""
    if groups is None:
        return logits
    index = groups_index(groups).to(logits.device)
    if index.shape[1] == 1:  # a plain subset: keep the columns
        return logits[:, index[:, 0]]
    return logits[:, index].amax(dim=-1)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top == targets.view(-1, 1)).any(dim=1).sum())


def macro_f1(preds: np.ndarray, targets: np.ndarray) -> float:
    preds, targets = np.asarray(preds), np.asarray(targets)
    scores = []
    for c in np.unique(targets):
        tp = np.sum((preds == c) & (targets == c))
        fp = np.sum((preds == c) & (targets != c))
        fn = np.sum((preds != c) & (targets == c))
        scores.append(2 * tp / (2 * tp + fp + fn))  # >0: c occurs in targets, so tp + fn >= 1
    return float(np.mean(scores)) if scores else float("nan")


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, Optional[float]]:
    """top1, top5 (None when there are 5 classes or fewer: it would be 1.0 by construction), macro_f1, n."""
    n = int(targets.numel())
    if n == 0:
        raise ValueError("no samples to score")
    preds = logits.argmax(dim=1)
    return {
        "top1": topk_correct(logits, targets, 1) / n,
        "top5": topk_correct(logits, targets, 5) / n if logits.shape[1] > 5 else None,
        "macro_f1": macro_f1(preds.cpu().numpy(), targets.cpu().numpy()),
        "n": n,
    }


def group_average(values: List[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None
