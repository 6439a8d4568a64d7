"""Smoke tests of benchmarks/: every script runs with the tiniest settings and prints its tables.

Only the shape of the output is checked (rows and columns), never a timing.
gpu.sh runs step_time.py (timing + memory probes) and data_throughput.py (with the step-time JSON), on CPU.
"""

import os
import subprocess
import sys

import pytest

from helpers import REPO, subprocess_env

BENCH = os.path.join(REPO, "benchmarks")
sys.path.insert(0, BENCH)

from _common import parse_markdown_table  # noqa: E402
from data_throughput import THROUGHPUT_HEADERS, WORKER_HEADERS  # noqa: E402
from plugin_overhead import HEADERS as OVERHEAD_HEADERS, LOOP_HEADERS  # noqa: E402
from step_time import MEM_HEADERS, TIME_HEADERS  # noqa: E402


def _number(cell):
    return float(cell.rstrip("%"))


def test_gpu_script_dry_run_on_cpu_prints_step_memory_and_data_tables(tmp_path):
    out = tmp_path / "gpu.md"
    env = subprocess_env(PYTHON=sys.executable, DEVICE="cpu", MODEL="tiny", BATCH="4", ROUNDS="1", STEPS="1", PRECISIONS="fp32",
                         FRACTIONS="0.5,1", STEP_ARGS="--memory-fractions 0.5 --no-memory-checkpointing --clock cpu",
                         DATA_SAMPLES="24", DATA_BATCH="8", WORKERS="0", TOTAL_S="400")
    result = subprocess.run(["bash", os.path.join(BENCH, "gpu.sh"), str(out)], env=env, capture_output=True,
                            text=True, timeout=400, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    text = out.read_text()

    headers, rows = parse_markdown_table(text, "model")
    assert headers == TIME_HEADERS, text
    assert [(r["B"], r["B'"]) for r in rows] == [("4", "2"), ("4", "4")]
    for r in rows:
        assert r["precision"] == "fp32" and r["frozen"] == "fp32"
        assert _number(r["FLYP ms"]) > 0 and _number(r["DiVE ms"]) > 0
        assert _number(r["(B+B')/B"]) == pytest.approx(1 + int(r["B'"]) / 4)
        assert _number(r["(B+B'+cB')/B"]) >= _number(r["(B+B')/B"])
    assert rows[0]["mem DiVE/FLYP"] != "-"  # B' = B/2 was probed

    mem_section = text[text.index("Peak memory"):]
    headers, mem = parse_markdown_table(mem_section, "model")
    assert headers == MEM_HEADERS
    assert [(r["config"], r["B'"]) for r in mem] == [("FLYP", "-"), ("DiVE", "2"), ("DiVE + cache", "2")]
    assert all(_number(r["peak MiB"]) > 0 for r in mem)

    data_section = text[text.index("## Data pipeline"):]
    headers, data = parse_markdown_table(data_section, "stream")
    assert headers == THROUGHPUT_HEADERS
    assert [r["stream"] for r in data] == ["ID (class prompts)", "reference (captions)"]
    assert all(_number(r["per worker"]) > 0 for r in data)
    headers, workers = parse_markdown_table(data_section, "model")
    assert headers == WORKER_HEADERS
    assert len(workers) == 2 and all(int(r["--workers"]) >= 1 for r in workers)


def test_plugin_overhead_compares_both_trainers(tmp_path, capsys, monkeypatch):
    import plugin_overhead
    import torch

    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    try:  # in this process (the trainers are subprocesses): saves one interpreter start
        assert plugin_overhead.main(["--model", "tiny", "--batch-size", "4", "--steps", "3", "--skip", "1",
                                     "--pairs", "1", "--loop-turns", "1", "--loop-steps", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    stdout = capsys.readouterr().out
    headers, rows = parse_markdown_table(stdout, "trainer")
    assert headers == OVERHEAD_HEADERS
    assert [r["trainer"] for r in rows] == ["open_clip_train.main", "open_clip_dive.main --loss flyp"]
    assert all(r["steps timed"] == "2" and _number(r["step ms (median)"]) > 0 for r in rows)
    assert "step time ratio plugin/open_clip:" in stdout
    headers, loops = parse_markdown_table(stdout, "loop")
    assert headers == LOOP_HEADERS
    assert [r["loop"] for r in loops] == ["open_clip_train.train.train_one_epoch",
                                          "open_clip_dive.train.train_one_epoch"]
    assert "loop step ratio plugin/open_clip:" in stdout
