"""Optional dependencies: imported where they are used, and a missing one is one line with the pip command."""

import importlib

from .errors import DiveUsageError


def require(module: str, pip_name: str, needed_for: str):
    """`module`, imported; or DiveUsageError('<needed_for>: needs <pip_name>, which is not installed: pip install ...')."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DiveUsageError(f"{needed_for}: needs {pip_name}, which is not installed: pip install {pip_name}") from None
