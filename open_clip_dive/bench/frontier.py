"""Frontiers at matched ID accuracy: the WiSE-FT curves of FLYP and vanilla FT (seed means, error bars), DiVE's
weight curve (the selection grid's runs) and its selected row; how far DiVE lies above or below each frontier at
its own ID accuracy; and the learning curves / ||m|| plots."""

import os
from typing import Dict, List, Optional, Tuple

from .stats import frontier_gap, mean_se

FRONTIER_Y = [("ood", "OOD avg"), ("ood_natural", "OOD natural"), ("zs", "zero-shot avg")]


def wise_curve(per_seed_points: Dict[int, Dict[float, Dict]], y: str) -> List[Tuple[float, float, float, Optional[float], Optional[float]]]:
    """[(alpha, ID mean, y mean, ID se, y se)] over seeds, by alpha (only alphas with every seed's point)."""
    alphas = sorted(set.intersection(*[set(p) for p in per_seed_points.values()])) if per_seed_points else []
    curve = []
    for a in alphas:
        xs = [p[a]["id"] for p in per_seed_points.values()]
        ys = [p[a][y] for p in per_seed_points.values()]
        if None in xs or None in ys:
            continue
        (mx, sx, _), (my, sy, _) = mean_se(xs), mean_se(ys)
        curve.append((a, mx, my, sx, sy))
    return curve


def gaps(frontiers: Dict[str, List], point: Dict[str, Dict]) -> Dict[str, Dict]:
    """{frontier name: {y: gap dict or None}} for a row's seed-mean point (its 'id' and y metrics)."""
    out = {}
    for name, by_y in frontiers.items():
        out[name] = {}
        for y, curve in by_y.items():
            if point["id"]["mean"] is None or point[y]["mean"] is None or not curve:
                out[name][y] = None
                continue
            out[name][y] = frontier_gap([(x, yy, sy) for _, x, yy, _, sy in curve], point["id"]["mean"],
                                        point[y]["mean"], point[y]["se"])
    return out


def plot_frontiers(task: str, frontiers: Dict[str, Dict[str, List]], weight_curve: List[Tuple[float, Dict]],
                   selected: Optional[Dict], pretrained: Optional[Dict], out_dir: str) -> Dict[str, str]:
    """One PNG per y metric: ID (x) against y, every curve with error bars; returns {y: path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    os.makedirs(out_dir, exist_ok=True)
    for y, title in FRONTIER_Y:
        pts = [(w, r) for w, r in weight_curve if r["id"]["mean"] is not None and r[y]["mean"] is not None]
        if not any(frontiers[f].get(y) for f in frontiers) and not pts:
            continue  # e.g. no natural OOD set in this task
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for name, by_y in frontiers.items():
            curve = by_y.get(y) or []
            if curve:
                ax.errorbar([c[1] for c in curve], [c[2] for c in curve], xerr=[c[3] or 0 for c in curve],
                            yerr=[c[4] or 0 for c in curve], marker="o", capsize=3, label=f"{name} + WiSE-FT")
                for a, x, yy, _, _ in curve:
                    ax.annotate(f"α={a:g}", (x, yy), textcoords="offset points", xytext=(4, -10), fontsize=7)
        if pts:
            ax.errorbar([r["id"]["mean"] for _, r in pts], [r[y]["mean"] for _, r in pts],
                        xerr=[r["id"]["se"] or 0 for _, r in pts], yerr=[r[y]["se"] or 0 for _, r in pts],
                        marker="s", capsize=3, label="DiVE, weight curve (λ)")
            for w, r in pts:
                ax.annotate(f"λ={w:g}", (r["id"]["mean"], r[y]["mean"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
        if selected and selected["id"]["mean"] is not None and selected[y]["mean"] is not None:
            ax.errorbar([selected["id"]["mean"]], [selected[y]["mean"]], xerr=[selected["id"]["se"] or 0],
                        yerr=[selected[y]["se"] or 0], marker="*", markersize=14, capsize=3, linestyle="none",
                        label="DiVE, selected λ (seed mean)")
        if pretrained and pretrained.get(y) is not None:
            ax.scatter([pretrained["id"]], [pretrained[y]], marker="P", s=120, color="black", label="pre-trained")
        ax.set_xlabel("ID test (%)")
        ax.set_ylabel(f"{title} (%)")
        ax.set_title(f"{task}: ID vs {title} at matched ID accuracy (mean ± SE over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = os.path.join(out_dir, f"{task}_frontier_id_vs_{y}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files[y] = path
    return files


def plot_curves(task: str, curves: Dict[str, Dict[int, List]], norms: Dict[int, List[Dict]], out_dir: str) -> Dict[str, str]:
    """ID validation accuracy per epoch (seed mean ± SE) of every row; ||m|| against the mean difference-vector
    norms over the steps of DiVE's runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    if curves:
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for row, per_seed in curves.items():
            epochs = sorted(set.intersection(*[{e for e, _, _ in c} for c in per_seed.values()]))
            stats = [mean_se([dict((e, v) for e, v, _ in c)[ep] for c in per_seed.values()]) for ep in epochs]
            if epochs:
                ax.errorbar(epochs, [s[0] for s in stats], yerr=[s[1] or 0 for s in stats], marker="o", capsize=3,
                            label=row, linewidth=2.5 if row == "flyp" else 1)
        ax.set_xlabel("epoch")
        ax.set_ylabel("ID validation accuracy (%)")
        ax.set_title(f"{task}: in-training evaluation on the validation split")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        files["val_curve"] = os.path.join(out_dir, f"{task}_val_curve.png")
        fig.tight_layout()
        fig.savefig(files["val_curve"], dpi=100)
        plt.close(fig)
    if any(norms.values()):
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for seed, trace in sorted(norms.items()):
            steps = [t["step"] for t in trace]
            ax.plot(steps, [t["ema_norm"] for t in trace], label=f"||m|| (seed {seed})")
            ax.plot(steps, [(t["u_norm"] + t["v_norm"]) / 2 for t in trace], linestyle="--",
                    label=f"mean ||u||, ||v|| (seed {seed})")
        ax.set_xlabel("step")
        ax.set_ylabel("norm")
        ax.set_title(f"{task}: DiVE's shared vector m against the difference vectors it averages")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        files["norms"] = os.path.join(out_dir, f"{task}_dive_norms.png")
        fig.tight_layout()
        fig.savefig(files["norms"], dpi=100)
        plt.close(fig)
    return files
