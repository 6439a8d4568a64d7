"""PNG plots with matplotlib (Agg): grouped bars per metric group and WiSE-FT curves.

Every figure is FIGSIZE at DPI with no tight bounding box, so each PNG is exactly PIXELS (tests rely on it).
"""

import os
from typing import Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .table import AVG_KEYS, PARTIAL, average, cell, column_title, table_columns  # noqa: E402

FIGSIZE = (10.0, 5.0)
DPI = 100
PIXELS = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))  # (width, height)


def _bars(ax, categories: List[str], series: Dict[str, List[Optional[float]]], ylabel: str) -> None:
    x = np.arange(len(categories))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        heights = [np.nan if v is None else v for v in values]
        bars = ax.bar(x - 0.4 + width * (i + 0.5), heights, width, label=label)
        for b, v in zip(bars, values):
            if v is not None and len(categories) * len(series) <= 40:
                ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(categories, rotation=30 if len(categories) > 5 else 0, ha="right" if len(categories) > 5 else "center")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)  # no bbox_inches="tight": the size stays PIXELS
    plt.close(fig)
    return path


def bar_charts(results: Dict, out_dir: str) -> Dict[str, str]:
    """One chart per group (its datasets + average) and a summary chart (ID, OOD avg, ZS avg)."""
    cols = table_columns(results)
    runs = results["runs"]
    files = {}
    for group in ("id", "ood", "zeroshot"):
        group_cols = [c for c in cols if c[2] == group]
        if not group_cols:
            continue
        series = {label: [cell(run, c)[0] for c in group_cols] for label, run in runs.items()}
        fig, ax = plt.subplots(figsize=FIGSIZE)
        _bars(ax, [column_title(c) for c in group_cols], series, "score (%)")
        ax.set_title({"id": "ID", "ood": "OOD", "zeroshot": "Zero-shot"}[group] + " datasets")
        files[f"bars_{group}"] = _save(fig, os.path.join(out_dir, f"bars_{group}.png"))
    summary_cols = [("avg", AVG_KEYS[g][0], g) for g in ("id", "ood", "zeroshot")
                    if any(AVG_KEYS[g][0] in (run.get("summary") or {}) for run in runs.values())]
    if summary_cols:
        series = {label: [cell(run, c)[0] for c in summary_cols] for label, run in runs.items()}
        fig, ax = plt.subplots(figsize=FIGSIZE)
        _bars(ax, [column_title(c) if c[2] != "id" else "ID" for c in summary_cols], series, "score (%)")
        ax.set_title("ID / OOD / zero-shot")
        files["bars_summary"] = _save(fig, os.path.join(out_dir, "bars_summary.png"))
    if any(run.get("geometry") for run in runs.values()):
        keys = [("image", "images"), ("text", "texts"), ("joint", "both")]
        series = {label: [(run.get("geometry") or {}).get(k, {}).get("rsa_cosine") for k, _ in keys]
                  for label, run in runs.items() if run.get("geometry")}
        fig, ax = plt.subplots(figsize=FIGSIZE)
        _bars(ax, [t for _, t in keys], series, "RSA (Spearman)")
        ax.set_title("RSA against the pre-trained model (cosine)")
        files["bars_rsa"] = _save(fig, os.path.join(out_dir, "bars_rsa.png"))
    return files


def wiseft_curves(results: Dict, out_dir: str) -> Dict[str, str]:
    """ID vs OOD avg and ID vs ZS avg, one line per run, each point labelled with its alpha."""
    sweeps = results.get("wise_ft") or {}
    files = {}
    for y_group, y_title, name in (("ood", "OOD avg", "wiseft_id_vs_ood"), ("zeroshot", "zero-shot avg", "wiseft_id_vs_zeroshot")):
        lines = wiseft_points(sweeps, y_group)
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=FIGSIZE)
        starts = [pts[0] for pts in lines.values() if pts[0][0] == 0.0]
        if starts:  # alpha 0 is the pre-trained model, common to every curve
            ax.scatter([starts[0][1]], [starts[0][2]], marker="*", s=250, color="black", zorder=3, label="pre-trained")
        partial = False
        for label, pts in lines.items():
            ax.plot([p[1] for p in pts], [p[2] for p in pts], marker="o", label=label)
            for a, x, y, text in pts:
                partial = partial or text.endswith(PARTIAL)
                if a in (0.0, 0.5, 1.0) or len(pts) <= 6 or text.endswith(PARTIAL):
                    ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel("ID (%)")
        ax.set_ylabel(f"{y_title} (%)")
        note = f"; {PARTIAL} = partial average" if partial else ""
        ax.set_title(f"WiSE-FT: ID vs {y_title} (labels = alpha; 0 = pre-trained, 1 = fine-tuned{note})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        files[name] = _save(fig, os.path.join(out_dir, f"{name}.png"))
    return files


def wiseft_points(sweeps: Dict, y_group: str) -> Dict[str, List[Tuple[float, float, float, str]]]:
    """{run: [(alpha, ID %, y %, label)]}: the label is the alpha, with PARTIAL when either average of the point
    is over fewer datasets than the suite lists (as in the tables)."""
    lines = {}
    for label, points in sweeps.items():
        pts = []
        for p in points:
            s = p["summary"]
            x, y = average(s, "id")[0], average(s, y_group)[0]
            if x is not None and y is not None:
                star = PARTIAL if s.get("id_partial") or s.get(f"{y_group}_partial") else ""
                pts.append((p["alpha"], x, y, f"{p['alpha']:g}{star}"))
        if pts:
            lines[label] = pts
    return lines


def write_plots(results: Dict, out_dir: str) -> Dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    files = bar_charts(results, out_dir)
    files.update(wiseft_curves(results, out_dir))
    return files
