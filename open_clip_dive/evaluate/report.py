"""results.json -> the comparison table (markdown, CSV) researchers read, across one or several result files.

Rows are runs (methods); columns: each ID dataset, each OOD dataset, OOD avg, each zero-shot dataset, ZS avg,
and RSA (cosine, as the paper reports it) for images, texts and both. Scores are the datasets' primary metric in
percent. An average over fewer datasets than the suite lists carries a '*'; a failed dataset shows 'error'.
"""

import csv
import json
import os
from typing import Dict, List, Sequence

from .table import PARTIAL, TRAINED_MARK, average, cell, column_title, table_columns


def write_json(results: Dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=str)


def load_results(paths: Sequence[str]) -> Dict:
    """Merge several results.json files into one (runs renamed '<folder>/<run>' where labels collide)."""
    merged = {"settings": {"merged_from": list(paths)}, "runs": {}, "wise_ft": {}, "errors": []}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        prefix = os.path.basename(os.path.dirname(os.path.abspath(path)))
        for label, run in data.get("runs", {}).items():
            new = label if label not in merged["runs"] else f"{prefix}/{label}"
            merged["runs"][new] = run
            if label in data.get("wise_ft", {}):
                merged["wise_ft"][new] = data["wise_ft"][label]
        merged["errors"].extend(data.get("errors", []))
        merged["settings"].setdefault("suite", {}).update(data.get("settings", {}).get("suite", {}))
    return merged


def comparison_rows(results: Dict):
    cols = table_columns(results)
    header = ["method"] + [column_title(c) for c in cols]
    rows = []
    for label, run in results["runs"].items():
        cells = [cell(run, c) for c in cols]
        rows.append((label, [c[0] for c in cells], [c[1] for c in cells]))
    return cols, header, rows


def markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def comparison_markdown(results: Dict) -> str:
    _, header, rows = comparison_rows(results)
    return markdown_table(header, [[label] + texts for label, _, texts in rows])


def write_csv(results: Dict, path: str) -> None:
    _, header, rows = comparison_rows(results)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for label, numbers, _ in rows:
            w.writerow([label] + ["" if v is None else round(v, 4) for v in numbers])


def geometry_markdown(results: Dict) -> str:
    header = ["method", "set", "RSA cosine", "RSA centred", "mean norm(u)", "norm(mean u)", "spread", "spread ratio"]
    rows = []
    for label, run in results["runs"].items():
        for name, g in (run.get("geometry") or {}).items():
            rows.append([label, name, f"{g['rsa_cosine']:.3f}", f"{g['rsa_centered']:.3f}", f"{g['diff_norm_mean']:.4f}",
                         f"{g['diff_mean_norm']:.4f}", f"{g['diff_spread']:.4f}", f"{g['diff_spread_ratio']:.3f}"])
    return markdown_table(header, rows) if rows else ""


def wiseft_markdown(results: Dict) -> str:
    rows = []
    for label, points in (results.get("wise_ft") or {}).items():
        for p in points:
            rows.append([label, f"{p['alpha']:.2f}"] + [average(p["summary"], g)[1] for g in ("id", "ood", "zeroshot")])
    return markdown_table(["run", "alpha", "ID", "OOD avg", "ZS avg"], rows) if rows else ""


def full_markdown(results: Dict) -> str:
    parts = ["# Evaluation results", "", f"Scores in percent (primary metric per dataset: top-1, or macro-F1 where the "
             "field reports it); RSA = Spearman of cosine-similarity upper triangles against the pre-trained model. "
             f"`{PARTIAL}` = average over fewer datasets than the suite lists (see errors); `{TRAINED_MARK}` = scored "
             "with the checkpoint's own classification head (the other numbers use the text tower's zero-shot head).",
             "", comparison_markdown(results)]
    geometry = geometry_markdown(results)
    if geometry:
        parts += ["", "## Geometry (RSA variants and difference vectors u = z_ft - z_pre)", "", geometry]
    wise = wiseft_markdown(results)
    if wise:
        parts += ["", "## WiSE-FT sweeps", "", wise]
    suite = results.get("settings", {}).get("suite", {})
    if suite:
        rows = [[n, str(d.get("group", "")), str(d.get("type", "")), str(d.get("path", "")), str(d.get("split", "")),
                 str(d.get("classes", "")), str(d.get("templates", "")), str(d.get("projection", "")),
                 str(d.get("primary", ""))] for n, d in suite.items()]
        parts += ["", "## Datasets", "", markdown_table(
            ["dataset", "group", "type", "path", "split", "classes", "templates", "projection", "primary"], rows)]
    if results.get("errors"):
        parts += ["", "## Errors", ""] + [f"- {e}" for e in results["errors"]]
    return "\n".join(parts) + "\n"


def write_reports(results: Dict, out_dir: str, plots: bool = True) -> Dict[str, str]:
    """results.json, results.md, results.csv and the PNGs; returns {kind: path}."""
    os.makedirs(out_dir, exist_ok=True)
    files = {"json": os.path.join(out_dir, "results.json"), "markdown": os.path.join(out_dir, "results.md"),
             "csv": os.path.join(out_dir, "results.csv")}
    write_json(results, files["json"])
    with open(files["markdown"], "w") as f:
        f.write(full_markdown(results))
    write_csv(results, files["csv"])
    if plots:
        from .plots import write_plots

        files.update(write_plots(results, os.path.join(out_dir, "plots")))
    return files
