"""The preemption signals in DataLoader workers.

SLURM (preemption, time limit, `scancel`) and `kill -TERM -<pgid>` signal every process of the job, the
DataLoader workers included. torch's worker handler dies of a SIGTERM that does not come from the main process
(and SIGUSR1's default action kills), so the main process fails with "DataLoader worker ... is killed by
signal" before it can checkpoint. `WorkerSignals`, chained into a loader's `worker_init_fn`, blocks the
preemption signals in the worker and takes them on a thread: ignored, except a SIGTERM from the main process,
which is torch's own shutdown (`Process.terminate()`), so the worker exits as torch's handler would.

`catch_early` covers the seconds before the run's handlers exist (torch and open_clip imports, argument
parsing): a preemption signal then is remembered and acted on at the first step, not fatal.
"""

import os
import signal
import threading


def preempt_signals(spec: str) -> list:
    """Signal numbers from --dive-preempt-signals ('USR1,TERM'; 'none' for none); ValueError names a bad one."""
    if spec.strip().lower() == "none":
        return []
    signums = []
    for name in spec.split(","):
        name = name.strip().upper()
        signum = getattr(signal, "SIG" + name, None) if name else None
        if not isinstance(signum, signal.Signals):
            raise ValueError(f"unknown signal '{name}' (use e.g. USR1,TERM)")
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            raise ValueError(f"SIG{name} cannot be caught, so it cannot trigger a checkpoint (use e.g. USR1,TERM)")
        signums.append(int(signum))
    return signums


class WorkerSignals:
    """worker_init_fn: the preemption signals are the main process's business, not the worker's."""

    def __init__(self, signums, chained=None):
        self.signums = list(signums)
        self.chained = chained

    def __call__(self, worker_id):
        signal.pthread_sigmask(signal.SIG_BLOCK, self.signums)  # threads started from here on inherit the mask
        threading.Thread(target=self._take, name="dive-preempt-signals", daemon=True).start()
        if self.chained is not None:
            self.chained(worker_id)

    def _take(self):
        while True:
            info = signal.sigwaitinfo(self.signums)
            if info.si_signo == signal.SIGTERM and info.si_pid == os.getppid():
                os._exit(0)


def _torch_loaders(loader):
    """The torch DataLoader(s) of `loader`: itself, or the first stage of a webdataset WebLoader."""
    from torch.utils.data import DataLoader

    if isinstance(loader, DataLoader):
        return [loader]
    return [stage for stage in getattr(loader, "pipeline", ()) if isinstance(stage, DataLoader)]


def protect_workers(loader, signums):
    """Chain WorkerSignals into `loader`'s worker_init_fn (before its workers start); once per loader."""
    if not signums:
        return
    for torch_loader in _torch_loaders(loader):
        if torch_loader.num_workers > 0 and not isinstance(torch_loader.worker_init_fn, WorkerSignals):
            torch_loader.worker_init_fn = WorkerSignals(signums, torch_loader.worker_init_fn)


# --- signals before the run's handlers exist ----------------------------------------------------------------------
EARLY_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)  # --dive-preempt-signals' default; known before it is parsed
_early = {"installed": [], "received": []}


def _remember(signum, frame):
    _early["received"].append(signum)


def catch_early():
    """At the start of `python -m open_clip_dive.main`: remember the default preemption signals until
    `take_early` (from the run's parse_args) decides what they mean."""
    for signum in EARLY_SIGNALS:
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _remember)
            _early["installed"].append(signum)


def take_early(signums) -> bool:
    """Whether one of `signums` (the run's preemption signals, whose handlers are now installed) came early.
    The other early-caught signals get their default action back, and any that came are delivered again."""
    received, _early["received"] = _early["received"], []
    for signum in _early["installed"]:
        if signum not in signums and signal.getsignal(signum) is _remember:
            signal.signal(signum, signal.SIG_DFL)
    _early["installed"] = []
    for signum in received:
        if signum not in signums:
            os.kill(os.getpid(), signum)
    return any(signum in signums for signum in received)


def original_handler(handler):
    """What a handler replaced by the run's should be restored to (the default, not the early catcher)."""
    return signal.SIG_DFL if handler is _remember else handler
