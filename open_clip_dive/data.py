"""The plugin's WebDataset streams: class-labelled ID shards turned into prompts, and the reference stream.

Both are plain webdataset pipelines built from open_clip_train's own stages (shard lists, resampling,
seeded shard shuffle, no-throw tar reading); what differs from open_clip's train pipeline:
- the text comes from the class label (`cls`) through a template drawn per sample and epoch (FLYP),
  or from the caption (`txt`) for reference pairs (CC3M as img2dataset writes it: jpg + txt + json);
- the sample shuffle, the resampled shard choice and the augmentation are seeded by (seed, epoch, rank,
  worker, sample), never by the global RNG, so a resumed run sees the same data, crops and prompts;
- a sample that fails to decode is skipped and counted in the log; a missing label or a label out of
  range stops the run with the shard and key named.
"""

import io
import math
import os
import random
import tarfile
from dataclasses import dataclass
from typing import Optional

import torch
import webdataset as wds
from open_clip_train.data import (DataInfo, ResampledShards2, SharedEpoch, detshuffle2, expand_urls,
                                  get_dataset_size, tarfile_to_samples_nothrow)

from .errors import DiveUsageError
from .guards import PassGuard, SkipGuard
from .prompts import load_classnames, load_templates, stable_hash, template_index

IMAGE_KEYS = ("jpg", "png", "jpeg", "webp")
SHARD_SHUFFLE = (2000, 500)  # open_clip's shard shuffle buffer (size, initial)
SAMPLE_SHUFFLE = (5000, 1000)  # open_clip's sample shuffle buffer (size, initial)

def has_image(sample) -> bool:
    return any(k in sample for k in IMAGE_KEYS)


def _worker_rank_info():
    rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
    return rank, worker


@dataclass
class WorkerSeed:
    """The resampled shard choice's seed per (seed, rank, worker): independent of the global RNG, so a resumed
    run (whose loader starts with another RNG state) draws the same shards."""

    seed: int

    def __call__(self) -> int:
        rank, worker = _worker_rank_info()
        return stable_hash("shards", self.seed, rank, worker) % 2**31


class SeededSampleShuffle(wds.PipelineStage):
    """A sample shuffle buffer seeded by (seed, epoch, rank, worker): the same order on every run and resume."""

    def __init__(self, bufsize: int, initial: int, seed: int, epoch: SharedEpoch):
        self.bufsize, self.initial, self.seed, self.epoch = bufsize, initial, seed, epoch

    def run(self, src):
        rank, worker = _worker_rank_info()
        rng = random.Random(stable_hash("samples", self.seed, self.epoch.get_value(), rank, worker))
        buf, src = [], iter(src)
        for sample in src:
            buf.append(sample)
            if len(buf) < self.bufsize:  # fill the buffer two at a time until it is full
                extra = next(src, None)
                if extra is not None:
                    buf.append(extra)
            if len(buf) >= self.initial:
                j = rng.randrange(len(buf))
                buf[j], buf[-1] = buf[-1], buf[j]
                yield buf.pop()
        rng.shuffle(buf)
        yield from buf


@dataclass
class ClassPrompt:
    """Turns a sample's class index into a prompt: template drawn per (sample, epoch), then the class name."""

    classnames_spec: str
    templates_spec: str
    seed: int
    epoch: SharedEpoch

    def __post_init__(self):
        self._classnames = None
        self._templates = None

    def __getstate__(self):  # templates are lambdas: rebuilt in each worker
        state = dict(self.__dict__)
        state["_templates"] = None
        return state

    def label(self, sample) -> int:
        """The sample's class index, checked against --classnames."""
        if self._templates is None:
            self._classnames = load_classnames(self.classnames_spec)
            self._templates = load_templates(self.templates_spec)
        where = f"shard '{sample.get('__url__', '?')}', sample '{sample.get('__key__', '?')}'"
        if "cls" not in sample:
            raise DiveUsageError(f"{where} has no 'cls' class label; class-labelled data (--classnames) needs "
                                 "'cls' in every sample, caption data needs 'txt' and no --classnames")
        try:
            label = int(sample["cls"].decode() if isinstance(sample["cls"], bytes) else sample["cls"])
        except ValueError:
            raise DiveUsageError(f"{where}: 'cls' is not an integer ({sample['cls']!r})") from None
        if not 0 <= label < len(self._classnames):
            raise DiveUsageError(f"{where}: class index {label} is out of range of the {len(self._classnames)} "
                                 f"names in --classnames {self.classnames_spec}")
        return label

    def __call__(self, sample) -> str:
        label = self.label(sample)
        index = template_index(self.seed, self.epoch.get_value(), sample.get("__url__", ""), sample["__key__"],
                               len(self._templates))
        return self._templates[index](self._classnames[label])


def caption_text(sample) -> str:
    if "txt" not in sample:
        raise DiveUsageError(f"shard '{sample.get('__url__', '?')}', sample '{sample.get('__key__', '?')}' has no "
                             "'txt' caption; reference shards need image + txt (as img2dataset writes them)")
    value = sample["txt"]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def sample_seed(seed: int, epoch: int, sample) -> int:
    return stable_hash("augment", seed, epoch, sample.get("__url__", ""), sample["__key__"]) % 2**63


def sample_id(sample) -> str:
    """`<shard basename>/<key>`: unique across shards, stable across machines (used for logs and the cache)."""
    return f"{os.path.basename(sample.get('__url__', ''))}/{sample['__key__']}"


def seeded_call(fn, value, seed: int):
    """fn(value) with torch's CPU RNG seeded by `seed`, the global state left as it was."""
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed would also queue CUDA seeds, ~100x slower per sample
        torch.default_generator.manual_seed(seed)
        return fn(value)


class ToTrainingSample:
    """A training sample dict from a raw one: decode the image, make the text, tokenize (+ cached embeddings).

    With `seed` and `epoch`, the augmentation draws from an RNG seeded by (seed, epoch, sample) and leaves the
    global RNG alone: the same crops on every rank count, worker count and resume (pipelines read ahead, so
    a global RNG restored at a checkpoint would not see the same draws)."""

    def __init__(self, make_text, preprocess, tokenizer, embeddings=None, seed=None, epoch=None):
        self.make_text, self.preprocess, self.tokenizer, self.embeddings = make_text, preprocess, tokenizer, embeddings
        self.seed, self.epoch = seed, epoch

    def _augment(self, image, sample):
        if self.seed is None:
            return self.preprocess(image)
        return seeded_call(self.preprocess, image, sample_seed(self.seed, self.epoch.get_value(), sample))

    def __call__(self, sample):
        text = self.make_text(sample)  # label errors raise here, before decoding
        out = {"image": self._augment(_decode_image(sample), sample), "text": self.tokenizer(text)[0],
               "key": sample_id(sample)}
        if hasattr(self.make_text, "label"):  # class-labelled ID data: the index too (classification losses)
            out["label"] = torch.tensor(self.make_text.label(sample))
        if self.embeddings is not None:
            out["ref0_image_features"], out["ref0_text_features"] = self.embeddings.lookup(sample)
        return out


def collate(samples):
    """Stack tensors, list the rest: a batch is a dict with the sample dicts' keys."""
    return {k: torch.stack([s[k] for s in samples]) if torch.is_tensor(samples[0][k]) else [s[k] for s in samples]
            for k in samples[0]}


def _decode_image(sample):
    from PIL import Image

    for key in IMAGE_KEYS:
        if key in sample:
            with Image.open(io.BytesIO(sample[key])) as im:
                return im.convert("RGB")
    raise ValueError(f"sample '{sample.get('__key__')}' has no image")


def _safe_map(fn, skips: SkipGuard):
    """Map that hands decode errors to `skips` (naming shard and key) but lets the user's data errors stop the run."""

    def stage(src):
        for sample in src:
            try:
                out = fn(sample)
            except DiveUsageError:
                raise
            except Exception as exn:  # corrupt image bytes and the like
                skips(exn, f"'{sample.get('__key__', '?')}' of shard '{sample.get('__url__', '?')}'")
                continue
            skips.ok()
            yield out

    return stage


@dataclass
class StreamSpec:
    shards: str
    batch_size: int
    workers: int
    num_samples: Optional[int]
    resampled: bool
    seed: int
    world_size: int
    upsampling_factors: Optional[str] = None  # '1::2', as open_clip's expand_urls reads it
    flag: str = "--train-data"
    batch_flag: str = "--batch-size"


def check_shard_split(spec: StreamSpec, num_shards: int):
    """Without resampling every rank and worker needs its own shards, and ranks need equal shares."""
    if spec.resampled:
        return
    needed = max(1, spec.workers) * spec.world_size
    if num_shards < needed:
        raise DiveUsageError(f"{spec.flag}: {num_shards} shard(s) for {spec.world_size} rank(s) x "
                             f"{max(1, spec.workers)} worker(s); use more shards, fewer workers, or resampling "
                             "(--dataset-resampled / --dive-ref-resampled)")
    if num_shards % spec.world_size:
        raise DiveUsageError(f"{spec.flag}: {num_shards} shards do not split evenly over {spec.world_size} ranks; "
                             "reshard to a multiple of the world size or use resampling (--dataset-resampled)")


def build_stream(spec: StreamSpec, make_text, preprocess, tokenizer, shared_epoch: SharedEpoch,
                 embeddings=None) -> DataInfo:
    urls, _ = expand_urls(spec.shards)
    num_samples = spec.num_samples
    if num_samples is None:
        num_samples, _ = get_dataset_size(spec.shards)
        if not num_samples:
            raise DiveUsageError(f"{spec.flag}: no sizes.json (or __len__ file) next to the shards; write one or "
                                 "give the sample count (--train-num-samples / --dive-ref-num-samples)")
    check_shard_split(spec, len(urls))
    if spec.resampled:
        stages = [ResampledShards2(spec.shards, weights=spec.upsampling_factors, worker_seed=WorkerSeed(spec.seed),
                                   deterministic=True, epoch=shared_epoch)]
    else:
        stages = [wds.SimpleShardList(urls),
                  detshuffle2(bufsize=SHARD_SHUFFLE[0], initial=SHARD_SHUFFLE[1], seed=spec.seed, epoch=shared_epoch),
                  wds.split_by_node, wds.split_by_worker]
    skips = SkipGuard(spec.flag)
    stages += [
        lambda src: tarfile_to_samples_nothrow(src, handler=skips),
        SeededSampleShuffle(SAMPLE_SHUFFLE[0], SAMPLE_SHUFFLE[1], spec.seed, shared_epoch),
        wds.select(has_image),
        _safe_map(ToTrainingSample(make_text, preprocess, tokenizer, embeddings, spec.seed, shared_epoch), skips),
        PassGuard(spec.flag, spec.batch_flag, spec.batch_size),  # with_epoch would repeat an empty pass forever
        wds.batched(spec.batch_size, collation_fn=collate, partial=False),
    ]
    dataset = wds.DataPipeline(*stages)
    global_batch = spec.batch_size * spec.world_size
    workers = max(1, spec.workers)
    worker_batches = math.ceil(math.ceil(num_samples / global_batch) / workers)
    dataset = dataset.with_epoch(worker_batches)
    loader = wds.WebLoader(dataset, batch_size=None, shuffle=False, num_workers=spec.workers,
                           persistent_workers=spec.workers > 0)
    loader.num_batches = worker_batches * workers
    loader.num_samples = loader.num_batches * global_batch
    return DataInfo(dataloader=loader, shared_epoch=shared_epoch)


def scan_first_shard(shards: str, limit: int = 100000) -> Optional[list]:
    """The samples of the first local shard as {suffix: b'' (or the cls bytes)} dicts: a cheap startup check
    (tar headers only; image bytes are skipped). None for remote shards."""
    urls, _ = expand_urls(shards)
    path = urls[0]
    if "://" in path or path.startswith("pipe:") or not os.path.isfile(path):
        return None
    samples, current = [], None
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, suffix = os.path.basename(member.name).partition(".")
                key = os.path.join(os.path.dirname(member.name), key)
                if current is None or current["__key__"] != key:
                    if len(samples) >= limit:
                        break
                    current = {"__url__": path, "__key__": key}
                    samples.append(current)
                suffix = suffix.lower()
                current[suffix] = tar.extractfile(member).read() if suffix == "cls" else b""
    except tarfile.TarError as e:
        lines = [line.strip(" -") for line in str(e).splitlines() if line.strip()]
        reason = " ".join(lines[:1] + ["; ".join(lines[1:])]).strip()  # tarfile lists each method on a line
        raise DiveUsageError(f"shard '{path}' is not a readable tar file ({reason})") from None
    return samples


def check_class_shard(shards: str, classnames_spec: str):
    """Every sample of the first shard has an image and a `cls` within the class-name list."""
    samples = scan_first_shard(shards)
    if not samples:
        return
    num_classes = len(load_classnames(classnames_spec))
    for sample in samples:
        where = f"--train-data: shard '{sample['__url__']}', sample '{sample['__key__']}'"
        if not has_image(sample):
            continue  # metadata-only members (e.g. img2dataset's failed downloads) are skipped by the pipeline
        if "cls" not in sample:
            hint = " (it has 'txt': drop --classnames to train on captions)" if "txt" in sample else ""
            raise DiveUsageError(f"{where} has no 'cls' class label{hint}")
        try:
            label = int(sample["cls"])
        except ValueError:
            raise DiveUsageError(f"{where}: 'cls' is not an integer ({sample['cls']!r})") from None
        if not 0 <= label < num_classes:
            raise DiveUsageError(f"{where}: class index {label} is out of range of the {num_classes} names in "
                                 f"--classnames {classnames_spec}")


def check_reference_shard(shards: str):
    """The first sample of the first reference shard is an image-caption pair."""
    for sample in (scan_first_shard(shards, limit=16) or [])[:1]:
        if "txt" not in sample or not has_image(sample):
            found = ", ".join(k for k in sample if not k.startswith("__"))
            raise DiveUsageError(f"--dive-ref-data: sample '{sample['__key__']}' of '{sample['__url__']}' needs an "
                                 f"image and a 'txt' caption (found: {found})")


def id_stream(args, preprocess, tokenizer, epoch: int) -> DataInfo:
    """Class-labelled ID shards (`cls`) with prompts from --classnames and --templates (the first shard is checked
    by params.validate: check_class_shard)."""
    spec = StreamSpec(args.train_data, args.batch_size, args.workers, args.train_num_samples,
                      args.dataset_resampled, args.seed, args.world_size,
                      args.train_data_upsampling_factors, "--train-data")
    shared_epoch = SharedEpoch(epoch=epoch)  # the template draw follows the stream's epoch
    prompt = ClassPrompt(args.classnames, args.templates, args.seed, shared_epoch)
    return build_stream(spec, prompt, preprocess, tokenizer, shared_epoch)


def reference_stream(args, preprocess, tokenizer, id_batches_per_epoch: int, epoch: int, embeddings=None) -> DataInfo:
    """Reference image-caption pairs; by default one reference batch per training step.

    With `embeddings` (a ReferenceCache) each sample also carries the frozen model's embeddings."""
    batch_size = args.dive_ref_batch_size or args.batch_size
    num_samples = args.dive_ref_num_samples or id_batches_per_epoch * batch_size * args.world_size
    workers = args.workers if args.dive_ref_workers is None else args.dive_ref_workers
    spec = StreamSpec(args.dive_ref_data, batch_size, workers, num_samples, args.dive_ref_resampled,
                      args.seed + 1, args.world_size, args.dive_ref_upsampling_factors, "--dive-ref-data",
                      "--dive-ref-batch-size" if args.dive_ref_batch_size else "--batch-size")
    return build_stream(spec, caption_text, preprocess, tokenizer, SharedEpoch(epoch=epoch), embeddings)


class SeededMapDict:
    """open_clip's `wds.map_dict(image=preprocess, text=tokenize)` with the image augmentation seeded per
    (seed, epoch, sample), as the plugin's own streams do: persistent loader workers otherwise carry their RNG
    from epoch to epoch, which a resumed run cannot restore."""

    def __init__(self, fns: dict, seed: int, epoch: SharedEpoch):
        self.fns, self.seed, self.epoch = fns, seed, epoch

    def __call__(self, src):
        for sample in src:
            sample = dict(sample)
            for key, fn in self.fns.items():
                if key == "image":
                    sample[key] = seeded_call(fn, sample[key], sample_seed(self.seed, self.epoch.get_value(), sample))
                else:
                    sample[key] = fn(sample[key])
            yield sample


def make_repeatable(loader, seed: int, shared_epoch: SharedEpoch) -> int:
    """Make open_clip's own WebDataset train pipeline repeatable: its `wds.shuffle` stage draws from an RNG seeded
    by pid and time (two runs differ; a resume continues with other samples), its augmentation from the loader
    workers' RNG; swap in SeededSampleShuffle (same buffer sizes) and SeededMapDict. Returns the stages swapped."""
    swapped = 0
    for torch_loader in getattr(loader, "pipeline", [loader]):
        pipeline = getattr(getattr(torch_loader, "dataset", None), "pipeline", None)
        for j, stage in enumerate(pipeline or []):
            f = getattr(stage, "f", None)
            if f is wds.filters._shuffle:
                args = dict(zip(("bufsize", "initial"), stage.args), **stage.kw)  # wds.shuffle's defaults below
                pipeline[j] = SeededSampleShuffle(args.get("bufsize", 1000), args.get("initial", 100), seed,
                                                  shared_epoch)
            elif f is wds.filters._map_dict and "image" in stage.kw and not stage.args:
                pipeline[j] = SeededMapDict({k: v for k, v in stage.kw.items() if k != "handler"}, seed, shared_epoch)
            else:
                continue
            swapped += 1
    return swapped


class RestartingIterator:
    """Endless batches from a DataInfo: a new pass (with the next pass number as its epoch) when one ends."""

    def __init__(self, info: DataInfo, first_pass: int = 0):
        self.info = info
        self.passes = first_pass
        self.batches_in_pass = 0
        self._it = None

    def start_pass(self, number: int, skip_batches: int = 0):
        self.passes = number
        self.info.set_epoch(number)
        self._it = iter(self.info.dataloader)
        self.batches_in_pass = 0
        for _ in range(skip_batches):
            next(self)

    def __next__(self):
        if self._it is None:
            self.start_pass(self.passes)
        try:
            batch = next(self._it)
        except StopIteration:
            self.start_pass(self.passes + 1)
            batch = next(self._it)
        self.batches_in_pass += 1
        return batch

    def state(self) -> dict:
        return {"pass": self.passes, "batches": self.batches_in_pass}

    def resume(self, position: dict):
        """Continue after the batch `position` names (a finished pass continues with the next one)."""
        if position["batches"] >= self.info.dataloader.num_batches:
            self.start_pass(position["pass"] + 1)
        else:
            self.start_pass(position["pass"], skip_batches=position["batches"])
