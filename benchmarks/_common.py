"""Shared bits of the benchmark scripts: the machine description, statistics, markdown tables, memory probes."""

import os
import platform
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # the scripts run as `python benchmarks/<name>.py` from anywhere
    sys.path.insert(0, REPO)

# The tiny model of the test-suite ("dive-tiny"), under its own name so a user config cannot clash.
TINY_MODEL = "dive-bench-tiny"
TINY_MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_tiny_model(directory=None) -> str:
    """Make `dive-bench-tiny` known to open_clip (idempotent); returns the config path."""
    import json
    import tempfile

    import open_clip

    if TINY_MODEL in open_clip.list_models():
        return ""
    directory = directory or tempfile.mkdtemp(prefix="dive-bench-")
    path = os.path.join(directory, f"{TINY_MODEL}.json")
    with open(path, "w") as f:
        json.dump(TINY_MODEL_CFG, f)
    open_clip.add_model_config(path)
    return path


def machine_description(device: str = "cpu") -> str:
    """CPU, GPU, load and versions, without importing open_clip (a light parent process stays light)."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    if "torch" in sys.modules:
        threads = sys.modules["torch"].get_num_threads()
    parts = [f"CPU: {cpu}, {os.cpu_count()} logical cores, torch threads {threads}"]
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.device(device))
            parts.append(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    try:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        parts.append(f"load average at start: {load}")
    except OSError:
        pass

    def v(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "?"

    parts.append(f"Python {platform.python_version()}, torch {v('torch')}, open_clip {v('open_clip_torch')}")
    return "; ".join(parts)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def quartiles(xs):
    """(q1, q3) of a sample (inclusive method); (x, x) for one value."""
    if len(xs) < 2:
        v = xs[0] if xs else float("nan")
        return v, v
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def relative_iqr(xs) -> float:
    """Interquartile range over the median: a robust noise figure for repeated step times."""
    q1, q3 = quartiles(xs)
    m = median(xs)
    return (q3 - q1) / m if m else float("nan")


def markdown_table(headers, rows) -> str:
    cells = [[str(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def parse_markdown_table(text: str, first_header: str):
    """The rows (as dicts) of the first markdown table in `text` whose first column is `first_header`."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cols and cols[0] == first_header:
            rows = []
            for body in lines[i + 2:]:
                if not body.startswith("|"):
                    break
                rows.append(dict(zip(cols, [c.strip() for c in body.strip().strip("|").split("|")])))
            return cols, rows
    return None, []


# --- memory probes -----------------------------------------------------------------------------------
def current_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss() -> int:
    """The process's high-water resident set (bytes): VmHWM on Linux, ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def fmt(x, digits=2):
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if x != x:  # nan
        return "-"
    return f"{x:.{digits}f}"
