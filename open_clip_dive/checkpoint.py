"""Checkpoints: written atomically, found again safely, and carrying the plugin's state.

open_clip's checkpoint format is kept (`epoch`, `name`, `state_dict`, `optimizer`, `scaler`); the plugin
adds one entry, `dive`, of plain tensors and numbers so `torch.load(..., weights_only=True)` still works:
the loss state (the EMA vector m), the step within the epoch for a mid-epoch (preemption) checkpoint,
the reference stream's position and the RNG states (CPU, and the current GPU's).
"""

import glob
import logging
import os
import random
import re
import zipfile
from typing import Optional

import numpy as np
import torch

PARTIAL_SUFFIX = ".partial"
_NAME = re.compile(r"epoch_(\d+)(?:_step_(\d+))?\.pt$")


def atomic_save(obj, path: str, save=torch.save):
    """Write to `<path>.partial` then rename: a kill mid-write never leaves a truncated `*.pt`."""
    tmp = f"{path}{PARTIAL_SUFFIX}"
    save(obj, tmp)
    os.replace(tmp, path)


def is_complete(path: str) -> bool:
    """torch.save writes a zip archive whose directory is at the end: a truncated file has none."""
    try:
        with zipfile.ZipFile(path) as zf:
            return len(zf.namelist()) > 0
    except (zipfile.BadZipFile, OSError):
        return False


def checkpoint_position(path: str):
    """(completed epochs, step within the next epoch) from a checkpoint name, or None for other files."""
    match = _NAME.search(os.path.basename(path))
    if not match:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def latest_checkpoint(directory: str) -> Optional[str]:
    """The furthest complete `epoch_N[_step_S].pt` in `directory` (partial and foreign files are skipped)."""
    found = []
    for path in glob.glob(os.path.join(directory, "**", "*.pt"), recursive=True):
        position = checkpoint_position(path)
        if position is None:
            continue
        if not is_complete(path):
            logging.warning(f"Ignoring incomplete checkpoint {path} (left by a killed write)")
            continue
        found.append((position, path))
    return max(found)[1] if found else None


def rng_state() -> dict:
    """Python, numpy and torch RNG states as tensors (weights_only-loadable); on a GPU also the current device's
    generator (dropout and patch dropout draw from it)."""
    version, py_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_version": version,
        "python_gauss": gauss,
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_gauss": (int(np_has_gauss), float(np_gauss)),
    }
    if torch.cuda.is_initialized():  # the current device only: touching the others would give each rank a context
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(int(x) for x in state["python"].tolist()), state["python_gauss"]))
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():  # a CUDA checkpoint resumed on a CPU keeps the CPU's part
        torch.cuda.set_rng_state(state["cuda"])
