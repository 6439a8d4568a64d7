"""The cells of the comparison table, shared by the markdown / CSV report (report.py) and the plots (plots.py).

Scores are a dataset's primary metric in percent. An average over fewer datasets than the suite lists is
marked PARTIAL ('*') wherever it is shown: table, WiSE-FT table and WiSE-FT curves.
"""

from typing import Dict, List, Optional, Tuple

AVG_KEYS = {"id": ("id", "ID avg"), "ood": ("ood_avg", "OOD avg"), "zeroshot": ("zeroshot_avg", "ZS avg")}
RSA_COLUMNS = [("image", "RSA img"), ("text", "RSA txt"), ("joint", "RSA both")]
PARTIAL = "*"
TRAINED_HEAD = "trained classification head"  # results.json's `head` of a score from a checkpoint's own head
TRAINED_MARK = "†"


def average(summary: Dict, group: str) -> Tuple[Optional[float], str]:
    """(percent, text with PARTIAL when fewer datasets than the suite lists went into it) of one group average."""
    v = (summary or {}).get(AVG_KEYS[group][0])
    if v is None:
        return None, "-"
    star = PARTIAL if summary.get(f"{group}_partial") else ""
    return 100 * v, f"{100 * v:.2f}{star}"


def table_columns(results: Dict) -> List[Tuple[str, str, Optional[str]]]:
    """[(kind, key, group)]: kind 'dataset' (key = name), 'avg' (key = summary key) or 'rsa' (key = modality)."""
    order: Dict[str, List[str]] = {"id": [], "ood": [], "zeroshot": [], "other": []}
    for run in results["runs"].values():
        for name, r in run.get("datasets", {}).items():
            group = r.get("group", "other")
            if name not in order[group]:
                order[group].append(name)
    cols: List[Tuple[str, str, Optional[str]]] = []
    for group in ("id", "ood", "zeroshot", "other"):
        cols += [("dataset", n, group) for n in order[group]]
        if group in AVG_KEYS and (len(order[group]) > 1 or (group != "id" and order[group])):
            cols.append(("avg", AVG_KEYS[group][0], group))
    if any(run.get("geometry") for run in results["runs"].values()):
        cols += [("rsa", key, None) for key, _ in RSA_COLUMNS]
    return cols


def column_title(col) -> str:
    kind, key, group = col
    if kind == "dataset":
        return f"{key} (ID)" if group == "id" else key
    if kind == "avg":
        return AVG_KEYS[group][1]
    return dict(RSA_COLUMNS)[key]


def cell(run: Dict, col) -> Tuple[Optional[float], str]:
    """(number for CSV / plots, text for the markdown table)."""
    kind, key, group = col
    if run.get("error"):  # the run itself could not be loaded
        return None, "error"
    if kind == "dataset":
        r = run.get("datasets", {}).get(key)
        if r is None:
            return None, ""
        if "error" in r:
            return None, "error"
        if r.get("score") is None:  # a metric the dataset cannot have (never written by this version)
            return None, "-"
        mark = TRAINED_MARK if r.get("head") == TRAINED_HEAD else ""
        return 100 * r["score"], f"{100 * r['score']:.2f}{mark}"
    if kind == "avg":
        return average(run.get("summary", {}), group)
    geometry = run.get("geometry") or {}
    v = geometry.get(key, {}).get("rsa_cosine")
    return (v, f"{v:.3f}") if v is not None else (None, "-")
