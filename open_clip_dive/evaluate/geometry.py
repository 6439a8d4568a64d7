"""How much fine-tuning moved the embedding geometry: RSA and difference-vector statistics.

RSA (representational similarity analysis) compares two models on one fixed sample set: build each model's
N x N similarity matrix, take the upper triangles (i < j) and report their Spearman correlation.
1.0 means the ranking of all pairwise similarities is unchanged. Two variants are reported, side by side:

- ``cosine`` (what the paper reports, DESIGN.md section 2): cosine similarities of the embeddings as given.
  It is NOT translation-invariant: cos(x + c, y + c) != cos(x, y) in general, because adding a common vector c
  changes the norms and angles of the vectors. So for a pure translation ``z_ft = z_pre + c`` this RSA is
  below 1 (how far below depends on |c| and on how the samples sit around c).
- ``centered``: cosine similarities after subtracting each model's own mean embedding over the sample set.
  Since (x + c) - mean(x + c) = x - mean(x), a pure translation gives exactly the same centred vectors and the
  RSA is exactly 1.0. This is the "geometry up to a translation" that DiVE's AVL / PVL losses aim to keep.
  For the joint (image + text) set one mean over both modalities is removed, so it is 1.0 only when images
  and texts move by the *same* vector -- DiVE's single shared m -- not when each modality has its own shift.

(Euclidean-distance RDMs would also be translation-invariant, but on unit-norm embeddings |x - y|^2 = 2 - 2cos,
so their ranks equal the cosine ones and they would repeat the first number for real models.)

Difference vectors u_i = z_ft(x_i) - z_pre(x_i) (on the L2-normalised embeddings, as in DiVE) summarise how
close fine-tuning is to a translation: ``spread_ratio`` = RMS |u_i - mean(u)| / RMS |u_i| is 0 for a pure
translation and 1 when the differences share no common component.
"""

from typing import Dict

import numpy as np
import torch

from ..optional import require


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def similarity_matrix(x, centered: bool = False) -> np.ndarray:
    x = _as_numpy(x)
    if centered:
        x = x - x.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.maximum(norms, 1e-12)
    return x @ x.T


def upper_triangle(m: np.ndarray) -> np.ndarray:
    return m[np.triu_indices(m.shape[0], k=1)]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    rankdata = require("scipy.stats", "scipy", "RSA (Spearman ranks)").rankdata
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def rsa(a, b, centered: bool = False) -> float:
    """Spearman correlation of the upper triangles of the two (optionally centred) cosine-similarity matrices."""
    a, b = _as_numpy(a), _as_numpy(b)
    if a.shape[0] != b.shape[0] or a.shape[0] < 3:
        raise ValueError(f"RSA needs the same >= 3 samples from both models (got {a.shape[0]} and {b.shape[0]})")
    return spearman(upper_triangle(similarity_matrix(a, centered)), upper_triangle(similarity_matrix(b, centered)))


def difference_stats(pre, ft) -> Dict[str, float]:
    """Mean norm of u_i = ft_i - pre_i, norm of their mean, their spread around it, and spread / RMS norm."""
    u = _as_numpy(ft) - _as_numpy(pre)
    mean = u.mean(axis=0)
    rms = float(np.sqrt((u * u).sum(axis=1).mean()))
    spread = float(np.sqrt(((u - mean) ** 2).sum(axis=1).mean()))
    return {"norm_mean": float(np.linalg.norm(u, axis=1).mean()), "mean_norm": float(np.linalg.norm(mean)),
            "spread": spread, "spread_ratio": spread / rms if rms > 0 else 0.0}


def geometry_report(img_pre, img_ft, txt_pre, txt_ft) -> Dict[str, Dict[str, float]]:
    """{image|text|joint: {rsa_cosine, rsa_centered, diff_norm_mean, diff_mean_norm, diff_spread, diff_spread_ratio}}."""
    sets = {"image": (img_pre, img_ft), "text": (txt_pre, txt_ft),
            "joint": (np.concatenate([_as_numpy(img_pre), _as_numpy(txt_pre)]),
                      np.concatenate([_as_numpy(img_ft), _as_numpy(txt_ft)]))}
    out = {}
    for name, (pre, ft) in sets.items():
        out[name] = {"rsa_cosine": rsa(pre, ft), "rsa_centered": rsa(pre, ft, centered=True),
                     **{f"diff_{k}": v for k, v in difference_stats(pre, ft).items()}}
    return out
