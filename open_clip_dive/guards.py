"""Guards against data loops that never end: webdataset's `with_epoch` repeats a pass until it has its batches,
so a pass that yields none (too few samples for one batch, nothing readable) would be repeated forever.

- `check_enough_samples`: before anything is built, the sample counts of sizes.json against the batch sizes;
- `PassGuard`: a pipeline stage that stops a pass too short for one batch, naming the flag;
- `SkipGuard`: the handler for unreadable samples; skips and counts them, and stops a stream that skips
  `MAX_SKIPS_IN_A_ROW` samples in a row (every image of a shard corrupt, a shard that is a directory).
"""

import logging
import os

import webdataset as wds

from .errors import DiveUsageError

MAX_SKIPS_IN_A_ROW = 1000


def _worker_where() -> str:
    rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
    return f"rank {rank} of {world_size}, loader worker {worker} of {num_workers}"


class PassGuard:
    """Counts the samples of each pass; a pass that ends with fewer than one batch stops the run."""

    def __init__(self, flag: str, batch_flag: str, batch_size: int):
        self.flag, self.batch_flag, self.batch_size = flag, batch_flag, batch_size

    def __call__(self, src):
        count = 0
        for sample in src:
            count += 1
            yield sample
        if count < self.batch_size:
            raise DiveUsageError(
                f"{self.flag}: a full pass over the shards of {_worker_where()} gave {count} usable sample(s), "
                f"fewer than one batch of {self.batch_flag} {self.batch_size}: use a smaller {self.batch_flag}, "
                "more data or shards, or fewer --workers")


class SkipGuard:
    """webdataset handler: skip a sample (or shard) that cannot be read, say which and how many so far."""

    def __init__(self, flag: str, limit: int = MAX_SKIPS_IN_A_ROW):
        self.flag, self.limit = flag, limit
        self.total = 0
        self.in_a_row = 0

    def __call__(self, exn, where: str = "") -> bool:
        self.total += 1
        self.in_a_row += 1
        where = where or _where_from(exn)
        if self.in_a_row >= self.limit:
            raise DiveUsageError(f"{self.flag}: {self.in_a_row} unreadable samples in a row, the last {where} "
                                 f"({exn!r}); check the shards")
        logging.warning(f"Skipping a corrupt sample {where} ({exn!r}); {self.total} skipped so far in this "
                        f"{self.flag} stream of this process.")
        return True

    def ok(self):
        self.in_a_row = 0


def _where_from(exn) -> str:
    """webdataset appends the shard's url to the arguments of a read error."""
    urls = [a for a in getattr(exn, "args", ()) if isinstance(a, str) and a != str(exn.args[0])]
    return f"in shard '{urls[-1]}'" if urls else "(shard unknown)"


def dataset_size(pattern: str):
    """open_clip's count from sizes.json / __len__ (None when there is none, or it does not list the shards)."""
    from open_clip_train.data import get_dataset_size

    try:
        return get_dataset_size(pattern)[0]
    except (KeyError, OSError, ValueError):
        return None


def check_enough_samples(pattern: str, batch_size: int, flag: str, batch_flag: str):
    """Without resampling a pass reads the data once: with fewer samples (sizes.json) than one batch it yields
    nothing. (Several ranks or workers need one batch each; the PassGuard catches that while training.)"""
    num_samples = dataset_size(pattern)  # None for remote shards or without sizes.json: left to the PassGuard
    if num_samples and num_samples < batch_size:
        raise DiveUsageError(f"{flag}: its {num_samples} samples (sizes.json) are fewer than one batch of "
                             f"{batch_flag} {batch_size}, so a pass would yield no batch; use a smaller "
                             f"{batch_flag}, more data, or resampling")


def check_shards_are_files(pattern: str, flag: str):
    """A directory given as shards is opened, fails, is skipped, and the pass is tried again forever."""
    import braceexpand

    for source in pattern.split("::"):
        if "://" in source or source.startswith("pipe:"):
            continue
        for path in braceexpand.braceexpand(source):
            if os.path.isdir(path):
                raise DiveUsageError(f"{flag}: '{path}' is a directory; give the shard files, e.g. "
                                     f"'{os.path.join(path, 'shard-{000000..000009}.tar')}'")
