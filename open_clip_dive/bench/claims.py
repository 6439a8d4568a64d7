"""The paper's claims, each a comparison of two rows on one metric, judged at the seeds' standard error."""

from typing import Dict, List, Optional

from .methods import LABELS
from .stats import diff_se, judge

PARITY = 1.0  # points: "matches FLYP in distribution" / "keeps zero-shot" allow this much
RSA_LEVEL = 0.95  # "RSA at the paper's level" (DiVE 0.981, the cosine constraint 0.949)

# (key, claim, the paper's numbers (ViT-B/16, ImageNet), row a, row b or a constant, metric, kind)
# kind: "greater" (a - b > 0), "at_least" (a - b > -PARITY), "parity" (|a - b| <= PARITY)
CLAIMS = [
    ("zs-kept", "DiVE keeps zero-shot accuracy (at most 1 point below the pre-trained model)", "63.7 vs 63.2",
     "dive", "pretrained", "zs", "at_least"),
    ("flyp-forgets", "FLYP loses zero-shot accuracy", "49.5 vs 63.2", "pretrained", "flyp", "zs", "greater"),
    ("ood-gain", "DiVE beats FLYP out of distribution (all OOD sets)", "63.2 vs 59.5", "dive", "flyp", "ood",
     "greater"),
    ("ood-gain-natural", "DiVE beats FLYP on the natural shifts", "63.2 vs 59.5 (all natural)", "dive", "flyp",
     "ood_natural", "greater"),
    ("id-parity", "DiVE matches FLYP in distribution (within 1 point)", "82.5 vs 82.2", "dive", "flyp", "id",
     "parity"),
    ("rsa-level", f"DiVE's RSA is at the paper's level (above {RSA_LEVEL})", "0.981", "dive", RSA_LEVEL, "rsa",
     "greater"),
    ("rsa-vs-flyp", "DiVE keeps the geometry better than FLYP (RSA)", "0.981 vs 0.825", "dive", "flyp", "rsa",
     "greater"),
    ("avl-ood", "AVL alone beats FLYP out of distribution", "62.9 vs 59.5", "avl", "flyp", "ood", "greater"),
    ("avl-zs", "AVL alone beats FLYP zero-shot", "62.9 vs 49.5", "avl", "flyp", "zs", "greater"),
    ("pvl-ood", "PVL alone beats FLYP out of distribution", "62.6 vs 59.5", "pvl", "flyp", "ood", "greater"),
    ("pvl-zs", "PVL alone beats FLYP zero-shot", "62.7 vs 49.5", "pvl", "flyp", "zs", "greater"),
    ("both-vs-avl", "AVL + PVL (DiVE) beats AVL alone out of distribution", "63.2 vs 62.9", "dive", "avl", "ood",
     "greater"),
    ("both-vs-pvl", "AVL + PVL (DiVE) beats PVL alone out of distribution", "63.2 vs 62.6", "dive", "pvl", "ood",
     "greater"),
    ("cosine-rsa", "difference vectors keep the geometry better than the cosine constraint (RSA)",
     "0.981 vs 0.949", "dive", "cosine", "rsa", "greater"),
    ("cosine-ood", "difference vectors beat the cosine constraint out of distribution", "not reported", "dive",
     "cosine", "ood", "greater"),
]
ORDER = {"snd": ("60.7", "54.4"), "replay": ("61.3 (ARF)", "55.6 (ARF)"), "lipsum": ("61.0 (third party)", "—"),
         "car-ft": ("—", "—"), "lp-ft": ("60.3", "—"), "ce": ("54.9", "—")}
for _b, (_ood, _zs) in ORDER.items():
    CLAIMS.append((f"order-{_b}-ood", f"DiVE beats {LABELS[_b]} out of distribution", f"63.2 vs {_ood}", "dive", _b, "ood",
                   "greater"))
    CLAIMS.append((f"order-{_b}-zs", f"DiVE beats {LABELS[_b]} zero-shot", f"63.7 vs {_zs}", "dive", _b, "zs", "greater"))


def _side(rows: Dict, pretrained: Optional[Dict], side, metric):
    """(mean, se, borrowed) of a row, of the pre-trained model (one deterministic evaluation: se 0) or a constant."""
    if isinstance(side, float):
        return side, 0.0, False
    if side == "pretrained":
        v = (pretrained or {}).get(metric)
        return v, (0.0 if v is not None else None), False
    r = rows.get(side)
    if r is None:
        return None, None, False
    return r[metric]["mean"], r[metric]["se"], r[metric]["borrowed"]


def judge_claims(rows: Dict[str, Dict], pretrained: Optional[Dict]) -> List[Dict]:
    out = []
    for key, text, paper, a, b, metric, kind in CLAIMS:
        (ma, sa, ba), (mb, sb, bb) = _side(rows, pretrained, a, metric), _side(rows, pretrained, b, metric)
        diff = None if ma is None or mb is None else ma - mb
        se = diff_se(sa, sb)
        verdict = judge(diff, se, threshold=-PARITY if kind == "at_least" else 0.0,
                        parity=PARITY if kind == "parity" else None)
        out.append({"key": key, "claim": text, "paper": paper, "a": a, "b": b, "metric": metric, "kind": kind,
                    "a_mean": ma, "b_mean": mb, "diff": diff, "se": se, "se_borrowed": ba or bb,
                    "verdict": verdict})
    return out
