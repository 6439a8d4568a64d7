"""Checks of the plugin's inputs that params.validate runs before anything is built (one line, exit 2 each):
numbers that must be finite or in range, upsampling factors, shard patterns that would make a data loop that
never ends, the first shards' labels and captions, class-name duplicates (a warning), model-config JSON, the
--resume file, a writable --logs. `check_resume_matches` runs once the model exists (in plugin.pt_load)."""

import glob
import json
import math
import os
import tempfile

from .errors import DiveUsageError
from .guards import check_enough_samples, check_shards_are_files, dataset_size
from .losses import loss_uses_reference
from .signals import preempt_signals

FINITE_FLAGS = ("dive_avl_weight", "dive_pvl_weight", "dive_replay_weight", "dive_ema_momentum")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_finite(args):
    """nan passes every `< 0` check (and silently drops a term); inf trains a NaN model."""
    for dest in FINITE_FLAGS:
        value = getattr(args, dest, None)
        if value is not None and not math.isfinite(value):
            raise DiveUsageError(f"{_flag(dest)}: must be a finite number, got {value}")


def check_counts(args):
    for dest, minimum in (("dive_ref_workers", 0), ("train_num_samples", 1)):
        value = getattr(args, dest, None)
        if value is not None and value < minimum:
            raise DiveUsageError(f"{_flag(dest)}: must be >= {minimum}, got {value}")


def check_upsampling_factors(spec, pattern, resampled: bool, flag: str, data_flag: str, resample_flag: str):
    """open_clip's format: one positive number per '::'-joined source of `data_flag`, with resampling."""
    if spec is None:
        return
    if not resampled:
        raise DiveUsageError(f"{flag}: sampling weights need resampling; add {resample_flag}")
    sources = (pattern or "").split("::")
    try:
        factors = [float(x) for x in str(spec).split("::")]
    except ValueError:
        raise DiveUsageError(f"{flag}: '{spec}' is not numbers joined by '::' (e.g. 1::2)") from None
    if len(factors) != len(sources):
        raise DiveUsageError(f"{flag}: {len(factors)} factor(s) for {len(sources)} '::'-joined source(s) of "
                             f"{data_flag}; give one per source")
    if not all(math.isfinite(f) and f > 0 for f in factors):
        raise DiveUsageError(f"{flag}: factors must be finite and > 0, got '{spec}'")


def _is_webdataset_train(args) -> bool:
    return bool(args.train_data) and (args.classnames is not None or (
        args.dataset_type in ("webdataset", "auto") and ".tar" in args.train_data))


def check_data(args):
    if args.train_data:
        check_shards_are_files(args.train_data, "--train-data")
    if args.dive_ref_data:
        check_shards_are_files(args.dive_ref_data, "--dive-ref-data")
    if _is_webdataset_train(args):
        check_upsampling_factors(args.train_data_upsampling_factors, args.train_data, args.dataset_resampled,
                                 "--train-data-upsampling-factors", "--train-data", "--dataset-resampled")
        if not args.dataset_resampled:
            check_enough_samples(args.train_data, args.batch_size, "--train-data", "--batch-size")
    if args.classnames is not None and args.train_data:  # before the model is built, what build_stream would find
        from .data import check_class_shard

        check_class_shard(args.train_data, args.classnames)
        if args.train_num_samples is None and not dataset_size(args.train_data):
            raise DiveUsageError("--train-data: no sizes.json (or __len__ file) next to the shards; write one or "
                                 "give the sample count with --train-num-samples")
    if args.dive_ref_data and args.loss is not None and loss_uses_reference(args.loss):
        from .data import check_reference_shard

        check_reference_shard(args.dive_ref_data)
    if args.dive_ref_data:
        check_upsampling_factors(args.dive_ref_upsampling_factors, args.dive_ref_data, args.dive_ref_resampled,
                                 "--dive-ref-upsampling-factors", "--dive-ref-data", "--dive-ref-resampled")
        if not args.dive_ref_resampled:
            ref_batch = args.dive_ref_batch_size or args.batch_size
            batch_flag = "--dive-ref-batch-size" if args.dive_ref_batch_size else "--batch-size"
            check_enough_samples(args.dive_ref_data, ref_batch, "--dive-ref-data", batch_flag)


def check_shard_splits(args):
    """Without resampling every rank and loader worker needs its own shards: checked now with the world size
    open_clip will take from the environment (the streams check again once it is known for sure)."""
    from open_clip_train.data import expand_urls
    from open_clip_train.distributed import world_info_from_env

    from .data import StreamSpec, check_shard_split

    world_size = world_info_from_env()[2]
    if args.classnames is not None and args.train_data:
        spec = StreamSpec(args.train_data, args.batch_size, args.workers, None, args.dataset_resampled, args.seed,
                          world_size)
        check_shard_split(spec, len(expand_urls(args.train_data)[0]))
    if args.dive_ref_data and args.loss is not None and loss_uses_reference(args.loss):
        workers = args.workers if args.dive_ref_workers is None else args.dive_ref_workers
        spec = StreamSpec(args.dive_ref_data, 1, workers, None, args.dive_ref_resampled, args.seed, world_size,
                          flag="--dive-ref-data")
        check_shard_split(spec, len(expand_urls(args.dive_ref_data)[0]))


def check_preempt_signals(args):
    try:
        preempt_signals(args.dive_preempt_signals)
    except ValueError as e:
        raise DiveUsageError(f"--dive-preempt-signals: {e}") from None


def check_classnames(args):
    if args.classnames is not None:
        from .prompts import load_classnames, warn_duplicates

        warn_duplicates(load_classnames(args.classnames), args.classnames)


def check_model_configs(args):
    """open_clip.add_model_config json-loads every file (a traceback on a bad one) and skips non-configs silently."""
    for path in args.dive_model_config or ():
        files = sorted(glob.glob(os.path.join(glob.escape(path), "*.json"))) if os.path.isdir(path) else [path]
        for file in files:
            try:
                with open(file, encoding="utf-8") as f:
                    config = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DiveUsageError(f"--dive-model-config: '{file}' is not valid JSON ({e})") from None
            if not isinstance(config, dict) or not all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg")):
                raise DiveUsageError(f"--dive-model-config: '{file}' is not an open_clip model config (it needs "
                                     "embed_dim, vision_cfg and text_cfg, like open_clip's model_configs/*.json)")


def check_resume(args):
    """A --resume file that open_clip would fail to load with a traceback (after building the model)."""
    from .checkpoint import is_complete

    path = args.resume
    if not path or path == "latest" or "://" in path:
        return
    if not os.path.exists(path):
        raise DiveUsageError(f"--resume: '{path}' does not exist; give a checkpoint (…/checkpoints/epoch_N.pt) or "
                             "--resume latest")
    if os.path.isdir(path):
        raise DiveUsageError(f"--resume: '{path}' is a directory; give a checkpoint file in it (e.g. epoch_N.pt) or "
                             "--resume latest with the run's --logs and --name")
    if not is_complete(path):
        raise DiveUsageError(f"--resume: '{path}' is not a complete torch checkpoint (truncated, or not a .pt file); "
                             "give another one, or --resume latest, which skips incomplete files")


def check_resume_matches(checkpoint, shapes: dict, path: str):
    """After loading: the state_dict fits the model built (else load_state_dict prints hundreds of lines)."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise DiveUsageError(f"--resume: '{path}' holds no state_dict; give a checkpoint written by training")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    missing = [k for k in shapes if k not in state]
    unexpected = [k for k in state if k not in shapes]
    resized = [k for k in shapes if k in state and tuple(getattr(state[k], "shape", ())) != shapes[k]]
    if missing or unexpected or resized:
        example = (missing or unexpected or resized)[0]
        raise DiveUsageError(f"--resume: '{path}' is a checkpoint of another model: {len(missing)} weight(s) missing, "
                             f"{len(unexpected)} unexpected, {len(resized)} of another shape (e.g. '{example}'); "
                             f"check --model and the checkpoint")


def check_writable_dir(path: str, flag: str):
    """A directory that os.makedirs can make and files can be written to (else a traceback, maybe hours later):
    not under a file, not on a read-only mount."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        made = "" if existing == os.path.abspath(path) else f", so '{path}' cannot be made"
        raise DiveUsageError(f"{flag}: '{existing}' is a file{made}; give a directory")
    try:  # made now (as it would be later anyway), and a file written to it: the only test a mount cannot fool
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as e:
        raise DiveUsageError(f"{flag}: cannot write to '{path}' ({e.strerror or e}); give a writable "
                             "directory") from None


def check_logs(args):
    logs = args.logs
    if logs and logs.lower() != "none" and "://" not in logs:
        check_writable_dir(logs, "--logs")


def check_args(args):
    check_preempt_signals(args)
    check_model_configs(args)
    check_resume(args)
    check_logs(args)
    check_classnames(args)
    check_finite(args)
    check_counts(args)
    check_data(args)
    check_shard_splits(args)
