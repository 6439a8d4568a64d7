"""Cached frozen-model embeddings of the reference set (`tools.cache_reference` writes, `--dive-ref-cache` reads).

Layout of a cache directory: `meta.json` (the model's identity: name, weights fingerprint, image size,
preprocessing) and one `<shard basename>.emb.pt` per shard holding `keys` (sample keys), `image` and `text`
([N, D] L2-normalised embeddings). Training with the cache skips the frozen model's forward pass; it needs
deterministic reference preprocessing (open_clip's eval transform), which the cache also records.
"""

import hashlib
import json
import os
from collections import OrderedDict

import torch

from .errors import DiveUsageError

META = "meta.json"
CACHE_VERSION = 1


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the weights (names, shapes and float32 values): a stale cache is refused."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def embedding_file(shard_url: str) -> str:
    return os.path.basename(shard_url) + ".emb.pt"


def read_meta(directory: str) -> dict:
    path = os.path.join(directory, META)
    if not os.path.isfile(path):
        raise DiveUsageError(f"--dive-ref-cache: '{directory}' has no {META}; build it with "
                             "`python -m open_clip_dive.tools.cache_reference`")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DiveUsageError(f"--dive-ref-cache: '{path}' is not valid JSON ({e}); rebuild the cache with "
                             "`python -m open_clip_dive.tools.cache_reference`") from None
    if not isinstance(meta, dict):
        raise DiveUsageError(f"--dive-ref-cache: '{path}' must hold a JSON object; rebuild the cache")
    return meta


def check_cache(directory: str, model_name: str, fingerprint: str, image_size) -> dict:
    """The cache's metadata, if it was made by these weights; a clear error otherwise."""
    meta = read_meta(directory)
    if meta.get("version") != CACHE_VERSION:
        raise DiveUsageError(f"--dive-ref-cache: '{directory}' has cache version {meta.get('version')}, this "
                             f"open_clip_dive reads {CACHE_VERSION}; rebuild it")
    if meta.get("fingerprint") != fingerprint:
        raise DiveUsageError(f"--dive-ref-cache: '{directory}' was made by other weights ({meta.get('model')} "
                             f"{meta.get('pretrained')}) than the frozen model ({model_name}); rebuild it with "
                             "tools.cache_reference for these weights")
    if list(meta.get("image_size", [])) != list(image_size):
        raise DiveUsageError(f"--dive-ref-cache: '{directory}' was made at image size {meta.get('image_size')}, "
                             f"the model uses {list(image_size)}; rebuild it")
    return meta


class ReferenceCache:
    """Looks up a reference sample's frozen embeddings; loads a few shard files at a time (per worker)."""

    def __init__(self, directory: str, max_open: int = 4):
        self.directory = directory
        self.max_open = max_open
        self._open = OrderedDict()

    def __getstate__(self):
        return {"directory": self.directory, "max_open": self.max_open, "_open": OrderedDict()}

    def _shard(self, url: str):
        name = embedding_file(url)
        if name not in self._open:
            path = os.path.join(self.directory, name)
            if not os.path.isfile(path):
                raise DiveUsageError(f"--dive-ref-cache: no embeddings for shard '{os.path.basename(url)}' in "
                                     f"'{self.directory}'; rebuild the cache for these --dive-ref-data shards")
            data = torch.load(path, weights_only=True)
            data["index"] = {key: i for i, key in enumerate(data["keys"])}
            self._open[name] = data
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        self._open.move_to_end(name)
        return self._open[name]

    def lookup(self, sample):
        shard = self._shard(sample.get("__url__", ""))
        i = shard["index"].get(sample["__key__"])
        if i is None:
            raise DiveUsageError(f"--dive-ref-cache: sample '{sample['__key__']}' of '{sample.get('__url__')}' is "
                                 "not in the cache; rebuild it for these shards")
        return shard["image"][i].float(), shard["text"][i].float()
