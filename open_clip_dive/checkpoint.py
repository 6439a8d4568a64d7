"""Checkpoints: written atomically, found again safely, and carrying the plugin's state.

open_clip's checkpoint format is kept (`epoch`, `name`, `state_dict`, `optimizer`, `scaler`); the plugin
adds one entry, `dive`, of plain tensors and numbers so `torch.load(..., weights_only=True)` still works:
the loss state (the EMA vector m), the step within the epoch for a mid-epoch (preemption) checkpoint,
the reference stream's position and the RNG states (CPU, and the current GPU's).
"""

import errno
import glob
import logging
import os
import random
import re
import shutil
import zipfile
from typing import Optional

import numpy as np
import torch

from .errors import DiveRunError, DiveUsageError

PARTIAL_SUFFIX = ".partial"
FULL_DISK_BYTES = 1 << 20  # free space below this after a failed write: the disk was full
_NAME = re.compile(r"epoch_(\d+)(?:_step_(\d+))?\.pt$")


def atomic_save(obj, path: str, save=torch.save):
    """Write to `<path>.partial` then rename: a kill mid-write never leaves a truncated `*.pt`. A failed write
    (a full disk) removes its partial file, keeps the previous `path`, and raises DiveRunError saying why."""
    tmp = f"{path}{PARTIAL_SUFFIX}"
    try:
        save(obj, tmp)
        os.replace(tmp, path)
    except Exception as e:
        full = _disk_full(e, tmp)  # measured before the partial file frees its space
        _remove(tmp)
        directory = os.path.dirname(os.path.abspath(path))
        if full:
            raise DiveRunError(f"no space left on {directory}: could not write {path} (the previous checkpoint, "
                               "if any, is kept); free space or point --logs elsewhere, then --resume latest") from None
        raise DiveRunError(f"could not write {path}: {_one_line(e)} (the previous checkpoint, if any, is kept)") from None


def _disk_full(error: Exception, path: str) -> bool:
    """torch's zip writer reports ENOSPC as "[enforce fail at inline_container.cc] ... unexpected pos"."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < FULL_DISK_BYTES
    except OSError:
        return False


def _one_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else repr(error)


def _remove(path: str):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def remove_partials(directory: str) -> list:
    """Delete the `*.partial` files a killed or failed write left behind (they may hold the disk full)."""
    removed = glob.glob(os.path.join(glob.escape(directory), "**", f"*{PARTIAL_SUFFIX}"), recursive=True)
    for path in removed:
        _remove(path)
        logging.info(f"Removed {path}, left by an interrupted checkpoint write")
    return removed


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


def resumable_path(path: str, latest_name: str) -> str:
    """--save-most-recent's `latest_name` (epoch_latest.pt), when a kill truncated it: the furthest complete
    epoch_N[_step_S].pt beside it, as --resume latest finds without --save-most-recent."""
    if os.path.basename(path) != latest_name or is_complete(path):
        return path
    fallback = latest_checkpoint(os.path.dirname(path))
    if fallback is None:
        raise DiveUsageError(f"--resume: '{path}' is incomplete (a killed write) and no complete epoch_N.pt is "
                             "beside it; start the run afresh under another --name")
    logging.warning(f"{path} is incomplete (a killed write); resuming from {fallback} instead")
    return fallback


def step_shape(args) -> dict:
    """What a step of a mid-epoch checkpoint means: its step count skips that many steps of this shape."""
    return {"batch_size": args.batch_size, "accum_freq": args.accum_freq, "world_size": args.world_size}


def check_step_shape(saved, args):
    now = step_shape(args)
    if saved is None or saved == now:
        return
    names = {"batch_size": "--batch-size", "accum_freq": "--accum-freq", "world_size": "ranks"}
    diff = ", ".join(f"{names[k]} {saved.get(k)} (now {now[k]})" for k in now if saved.get(k) != now[k])
    raise DiveUsageError(f"--resume: the mid-epoch checkpoint counts steps of {diff}; resume with the same values, "
                         "or from an epoch_N.pt checkpoint (otherwise the rest of the epoch would be skipped)")


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
