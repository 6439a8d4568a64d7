"""The session's bare-python shim (tests/conftest.py) is in place: a test that leans on whatever `python` is on
PATH fails here instead of passing on a machine that happens to have torch in its global Python."""

import subprocess
import sys

from conftest import BARE_PYTHON_MESSAGE, SELF_TEST_ARG


def test_bare_python_and_python3_fail_loudly_during_the_tests():
    for name in ("python", "python3"):
        result = subprocess.run(["bash", "-c", f"{name} -c 'import sys' {SELF_TEST_ARG}"], capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 1, (name, result.stderr)
        assert BARE_PYTHON_MESSAGE in result.stderr, result.stderr


def test_the_interpreter_of_the_tests_still_runs():
    result = subprocess.run([sys.executable, "-c", "import torch; print(torch.__name__)"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "torch", result.stderr
