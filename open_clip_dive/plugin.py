"""The glue: rebinds the names open_clip_train.main calls, so its main() trains with the plugin.

open_clip_train.main binds its collaborators at import time, so the plugin replaces them *there*:
parse_args, create_model_and_transforms, get_data, create_loss, train_one_epoch, pt_load,
get_latest_checkpoint, init_distributed_device, setup_logging, and `torch` (a view of torch whose `save`
is atomic and adds the plugin's state to checkpoints, and whose DDP accepts CPU modules). Without
plugin flags every wrapper hands straight through to open_clip's own function. Per-run state lives in a
`Run` created by each main() call (parse_args is the first thing main() calls).
"""

import logging
import os
import signal
import types

import open_clip_train.data as oc_data
import open_clip_train.main as oc_main
import torch
from open_clip_train.distributed import all_gather_object

from . import checkpoint as ckpt
from .checks import check_resume_matches
from .data import RestartingIterator, id_stream, make_repeatable, reference_stream
from .determinism import check_deterministic, eval_mode_costs
from .distributed import any_rank, barrier
from .errors import DiveRunError, DiveUsageError
from .finite import check_weights
from .loss_choice import ignored_flags, ignored_frozen_flags
from .losses import create_loss as registry_create_loss
from .loss_setup import prepare_loss
from .losses import find_head, frozen_batch, needs_frozen, needs_reference
from .params import PLUGIN_FLAGS_DEST, validate
from .params import parse_args as plugin_parse_args
from .provenance import check_training, training_preprocess
from .raw_features import check_raw_features
from .reference import build_reference, frozen_copy
from .refcache import ReferenceCache, check_cache, model_fingerprint
from .signals import original_handler, preempt_signals, protect_workers, take_early
from .speed import channels_last_image_tower, use_fused_kernel
from .train import train_one_epoch as plugin_train_one_epoch

UPSTREAM = {}  # name -> open_clip's original, captured once


class Run:
    """Everything one main() call needs beyond open_clip's own state."""

    def __init__(self, args):
        self.args = args
        self.active = bool(getattr(args, PLUGIN_FLAGS_DEST, False))
        self.loss = None
        self.reference = None  # FrozenReference, when the loss needs the frozen model
        self.reference_stream = None  # RestartingIterator over the reference loader
        self.preprocess_val = None
        self.tokenizer = None
        self.resume = None  # the `dive` entry of the checkpoint we resumed from
        self.model_built = False
        self.notes = []  # (level, message) for the log's first lines, once logging is set up
        self.model_shapes = {}  # name -> shape of the model's weights, to check a --resume checkpoint against
        self._rng = None
        self._preempt = False
        self._old_handlers = {}
        self._rng_states = []
        self._epoch_rng = None  # the RNG state when this epoch's ID loader iterator was made (it draws its shuffle)
        self._epoch_rng_states = []
        self.steps_done = self._epoch_start = 0  # optimizer steps of the current epoch (at its start)

    # --- preemption -------------------------------------------------------------------------------
    @property
    def bn_eval(self) -> bool:
        if self.args.dive_bn_eval is not None:
            return self.args.dive_bn_eval
        return self.loss is not None and needs_frozen(self.loss)

    @property
    def deterministic(self) -> bool:
        if self.args.dive_deterministic is not None:
            return self.args.dive_deterministic
        return self.loss is not None and needs_frozen(self.loss)

    @property
    def preempt_signals(self) -> list:
        """The signals that checkpoint and exit 75 (none without a plugin loss: open_clip's loop has no check)."""
        return preempt_signals(self.args.dive_preempt_signals) if self.active and self.args.loss is not None else []

    def install_signal_handlers(self):
        signums = self.preempt_signals
        for signum in signums:
            if signum not in self._old_handlers:
                self._old_handlers[signum] = original_handler(signal.signal(signum, self._on_signal))
        if take_early(signums):
            logging.warning("A preemption signal came during startup: checkpointing after the first step, then exiting.")
            self._preempt = True

    def restore_signal_handlers(self):
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers = {}

    def _on_signal(self, signum, frame):
        logging.warning(f"Received {signal.Signals(signum).name}: checkpointing after this step, then exiting.")
        self._preempt = True

    def preemption_requested(self) -> bool:
        if not self._old_handlers:
            return False
        a = self.args
        return any_rank(self._preempt, a.world_size, a.horovod, torch.device(a.device))

    def save_preemption_checkpoint(self, model, optimizer, scaler, epoch, step_in_epoch):
        """The checkpoint's path (None with --logs none); DiveRunError on every rank when rank 0 cannot write it."""
        a = self.args
        self.gather_rng()
        path = os.path.join(a.checkpoint_path, f"epoch_{epoch}_step_{step_in_epoch}.pt")
        failed = None
        if a.rank == 0 and a.save_logs:
            state = model._orig_mod.state_dict() if hasattr(model, "_orig_mod") else model.state_dict()
            checkpoint = {"epoch": epoch, "name": a.name, "state_dict": state, "optimizer": optimizer.state_dict()}
            if scaler is not None:
                checkpoint["scaler"] = scaler.state_dict()
            checkpoint["dive"] = self.state(step_in_epoch)
            try:
                check_weights(state, path)
                ckpt.atomic_save(checkpoint, path)
                if a.save_most_recent:
                    ckpt.atomic_save(checkpoint, os.path.join(a.checkpoint_path, oc_main.LATEST_CHECKPOINT_NAME))
                logging.info(f"Preemption checkpoint written: {path}")
            except DiveRunError as e:
                failed = e
        if any_rank(failed is not None, a.world_size, a.horovod, torch.device(a.device)):  # all ranks stop
            raise failed or DiveRunError(f"rank 0 could not write the preemption checkpoint {path}")
        barrier(a.world_size, a.horovod)
        return path if a.logs and a.logs.lower() != "none" else None  # --logs none: nothing was written

    # --- state in checkpoints ---------------------------------------------------------------------
    def state(self, step_in_epoch: int = 0) -> dict:
        state = {"step_in_epoch": step_in_epoch, "rng": self._rng_states}
        if step_in_epoch:  # a loader that shuffles with the global RNG (open_clip's csv) redraws the same order
            state["rng_epoch_start"] = self._epoch_rng_states
            state["steps_of"] = ckpt.step_shape(self.args)
        if self.loss is not None:
            loss_state = self.loss.state_dict()
            state["loss_state"] = loss_state
            ema = [v for k, v in loss_state.items() if k.endswith("average.ema")]
            if ema:
                state["ema"] = ema[0]
        if self.reference_stream is not None:
            state["reference_stream"] = self.reference_stream.state()
        return state

    def begin_epoch(self, epoch) -> int:
        """Put the reference stream and RNGs where the checkpoint left them; returns the ID batches to skip."""
        resume, self.resume = self.resume, None
        skip = 0
        if resume is not None:
            skip = int(resume.get("step_in_epoch", 0))
            if skip:
                ckpt.check_step_shape(resume.get("steps_of"), self.args)
            rng = resume.get("rng") or []
            if len(rng) == self.args.world_size:  # one state per rank
                self._rng = rng[self.args.rank]
            position = resume.get("reference_stream")
            if self.reference_stream is not None and position is not None:
                self.reference_stream.resume(position)
            epoch_rng = resume.get("rng_epoch_start") or []
            if skip and len(epoch_rng) == self.args.world_size:  # after the reference loader drew from it
                ckpt.set_rng_state(epoch_rng[self.args.rank])
        if skip == 0:
            self.restore_rng()
        self._epoch_rng = ckpt.rng_state()
        self.steps_done = self._epoch_start = skip
        return skip

    def agree_on_data(self, failure, model, optimizer, scaler, epoch):
        """After each fetch of the next batch, all ranks learn whether any failed (one all-reduce; none for one
        process): a rank stopping alone would leave the others waiting in the step's collectives. Then all keep
        the steps trained so far, so a fixed run resumes there, and stop."""
        a = self.args
        if not any_rank(failure is not None, a.world_size, a.horovod, torch.device(a.device)):
            return
        self.checkpoint_after_data_error(model, optimizer, scaler, epoch)
        raise failure or DiveUsageError(f"rank {a.rank} stopped: another rank could not read its next batch (its "
                                        "error line names the shard and sample)")

    def checkpoint_after_data_error(self, model, optimizer, scaler, epoch):
        """Called on every rank (the save is collective)."""
        if self.steps_done <= self._epoch_start:
            return
        try:
            path = self.save_preemption_checkpoint(model, optimizer, scaler, epoch, self.steps_done)
        except DiveRunError as e:  # the data error is what the user must see
            logging.error(f"Could not keep the steps before the bad data: {e}")
            return
        if path:
            logging.error(f"Stopping on bad data after step {self.steps_done} of epoch {epoch}; checkpoint {path} "
                          "written: fix the data, then --resume latest")

    def restore_rng(self):
        if self._rng is not None:
            ckpt.set_rng_state(self._rng)
            self._rng = None

    def gather_rng(self):
        """Every rank's RNG state, for the next checkpoint (a collective: all ranks call it)."""
        a = self.args
        state = (ckpt.rng_state(), self._epoch_rng)
        states = all_gather_object(a, state) if a.world_size > 1 else [state]
        self._rng_states = [now for now, _ in states]
        self._epoch_rng_states = [start for _, start in states]

    def end_epoch(self, model, epoch):
        a = self.args
        self.gather_rng()
        if a.dive_log_sample_keys:
            ema = self.state().get("ema")
            if ema is not None:
                torch.save(ema.cpu(), os.path.join(a.logs, a.name, f"dive_ema_rank{a.rank}.pt"))
        if a.dive_eval_suite:
            from .evaluate import evaluate_in_training

            unwrapped = model.module if hasattr(model, "module") else model
            head = find_head(self.loss.state_dict()) if self.loss is not None else None
            evaluate_in_training(unwrapped, a, epoch + 1, self.preprocess_val, self.tokenizer, head=head)
            barrier(a.world_size, a.horovod)

    def extra_metrics(self, loss) -> dict:
        metrics = getattr(loss, "metrics", None)
        return metrics() if callable(metrics) else {}

    def record_keys(self, micro_batches):
        a = self.args
        if not a.dive_log_sample_keys:
            return
        with open(os.path.join(a.logs, a.name, f"sample_keys_rank{a.rank}.txt"), "a") as f:
            for batch, ref in micro_batches:
                f.writelines(f"id {k}\n" for k in batch.get("key", ()))
                f.writelines(f"ref {k}\n" for k in (ref or {}).get("key", ()))


_run = None  # the Run of the main() call in progress


def current_run() -> Run:
    return _run


# --- wrappers -------------------------------------------------------------------------------------
def parse_args(argv):
    global _run
    args = plugin_parse_args(argv, UPSTREAM["parse_args"])
    if _run is not None:
        _run.restore_signal_handlers()
    _run = Run(args)
    if _run.active:
        validate(args)
        given = getattr(args, PLUGIN_FLAGS_DEST)
        _run.notes = [(logging.INFO, f"open_clip_dive: loss {args.loss or '(open_clip)'}: {args.dive_loss_reason}")]
        _run.notes += [(logging.WARNING, f"open_clip_dive: {w}") for w in ignored_flags(args.loss, given)]
    _run.install_signal_handlers()  # now, not after the model is built: a signal then would kill the run
    if _run.active:
        for path in args.dive_model_config or ():
            import open_clip

            open_clip.add_model_config(path)
        check_training(args)  # QuickGELU vs GELU of --pretrained / --resume / --dive-ref-pretrained
    return args


def check_launch_environment(args, env=os.environ):
    """The launch mistakes that otherwise end in a traceback from deep inside, or a hang."""
    if args.horovod:
        return
    ntasks = int(env.get("SLURM_NTASKS", "1") or 1)
    under_srun = "SLURM_PROCID" in env and "WORLD_SIZE" not in env and ntasks > 1
    if under_srun and args.dist_url in (None, "env://") and not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
        raise DiveUsageError(
            f"running as SLURM task {env.get('SLURM_PROCID')} of {ntasks} without MASTER_ADDR/MASTER_PORT: export "
            "MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1) and MASTER_PORT=<free port> "
            "in the batch script (launch_scripts/slurm_dive.sbatch does), or pass --dist-url tcp://host:port")


def init_distributed_device(args):
    check_launch_environment(args)
    device = UPSTREAM["init_distributed_device"](args)
    if args.horovod:
        # webdataset's split_by_node reads RANK/WORLD_SIZE; Horovod sets neither (every rank read every shard)
        os.environ["RANK"], os.environ["WORLD_SIZE"] = str(args.rank), str(args.world_size)
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return device


def create_model_and_transforms(*args, **kwargs):
    run = _run
    if run is not None and run.active and not run.model_built:  # a fine-tuned FILE gets its tag's preprocessing
        kwargs = training_preprocess(run.args, kwargs)
    result = UPSTREAM["create_model_and_transforms"](*args, **kwargs)
    if run is None or not run.active or run.model_built:
        return result  # the distill teacher, or plain open_clip
    run.model_built = True
    if run.args.rank == 0 and os.path.isdir(getattr(run.args, "checkpoint_path", "") or ""):
        ckpt.remove_partials(run.args.checkpoint_path)  # a killed or failed write's, which may hold the disk full
    model, _, run.preprocess_val = result
    run.model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if channels_last_image_tower(model):  # before the frozen copy, which inherits the layout
        logging.info("The image tower's convolutions run channels-last (same features, faster).")
    a = run.args
    if a.loss is not None:
        run.loss = registry_create_loss(a)
        for warning in ignored_frozen_flags(a.loss, getattr(a, PLUGIN_FLAGS_DEST), frozen_batch(run.loss)):
            logging.warning(f"open_clip_dive: {warning}")
        if frozen_batch(run.loss) == "reference" and a.dive_ref_cache:
            image_size = model.visual.image_size
            image_size = list(image_size) if isinstance(image_size, (tuple, list)) else [image_size] * 2
            check_cache(a.dive_ref_cache, a.model, model_fingerprint(model), image_size)
            logging.info(f"Frozen-model embeddings come from the cache {a.dive_ref_cache}; no frozen copy kept.")
        elif needs_frozen(run.loss):
            if a.dive_ref_pretrained:
                run.reference = build_reference(a, UPSTREAM["create_model_and_transforms"], model.logit_scale.device)
            else:
                run.reference = frozen_copy(model, a.dive_ref_precision)
            logging.info(f"Frozen reference model ready ({a.dive_ref_precision}, not DDP-wrapped).")
        if prepare_loss(run.loss, model, a):
            logging.info(f"--loss {a.loss}: its own parameters (e.g. the classification head) train with the model.")
        if getattr(run.loss, "reference_space", "normalized") == "raw":
            check_raw_features(model)
        if run.deterministic:
            check_deterministic(model, run.bn_eval)
            for warning in eval_mode_costs(model, a.grad_checkpointing):
                logging.warning(f"open_clip_dive: {warning}")
            logging.info("The trainable model runs in eval mode (no dropout, drop-path or patch dropout; "
                         f"BatchNorm statistics {'frozen' if run.bn_eval else 'from the batch'}): "
                         "--dive-deterministic.")
    return result


def get_data(args, preprocess_fns, epoch=0, tokenizer=None):
    run = _run
    if run is None or not run.active:
        return UPSTREAM["get_data"](args, preprocess_fns, epoch=epoch, tokenizer=tokenizer)
    run.tokenizer = tokenizer
    class_labels = args.classnames is not None and args.train_data
    if class_labels:
        train_data, args.train_data = args.train_data, None  # open_clip builds val / imagenet only
        try:
            data = UPSTREAM["get_data"](args, preprocess_fns, epoch=epoch, tokenizer=tokenizer)
        finally:
            args.train_data = train_data
        data["train"] = id_stream(args, preprocess_fns[0], tokenizer, epoch)
    else:
        data = UPSTREAM["get_data"](args, preprocess_fns, epoch=epoch, tokenizer=tokenizer)
        if run.loss is not None and "train" in data and data["train"].shared_epoch is not None:
            make_repeatable(data["train"].dataloader, args.seed, data["train"].shared_epoch)  # exact resumes
    if run.loss is not None and needs_reference(run.loss) and "train" in data:
        cached = args.dive_ref_cache and frozen_batch(run.loss) == "reference"
        augment = args.dive_ref_augment and not cached
        info = reference_stream(args, preprocess_fns[0 if augment else 1], tokenizer,
                                data["train"].dataloader.num_batches, epoch,
                                embeddings=ReferenceCache(args.dive_ref_cache) if cached else None)
        run.reference_stream = RestartingIterator(info, first_pass=epoch)
    streams = list(data.values()) + ([run.reference_stream.info] if run.reference_stream is not None else [])
    for info in streams:
        protect_workers(info.dataloader, run.preempt_signals)  # SLURM signals the workers too
    return data


def create_loss(args):
    run = _run
    if run is None or run.loss is None:
        return UPSTREAM["create_loss"](args)
    if run.resume and run.resume.get("loss_state"):
        missing, unexpected = run.loss.load_state_dict(run.resume["loss_state"], strict=False)
        logging.info("Restored the loss state (EMA vector) from the checkpoint."
                     + (f" Not in the checkpoint (kept fresh): {missing}." if missing else "")
                     + (f" Not used by --loss {args.loss}: {unexpected}." if unexpected else ""))
    run.loss.to(torch.device(args.device))
    return run.loss


def train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=None):
    run = _run
    if run is not None and run.active and args.dive_fused_adamw and not use_fused_kernel(optimizer):
        raise DiveUsageError(f"--dive-fused-adamw: torch has no fused kernel for {type(optimizer).__name__} on "
                             f"{args.device}; drop the flag")
    if run is None or not run.active or args.loss is None:  # plain open_clip
        return UPSTREAM["train_one_epoch"](model, data, loss, epoch, optimizer, scaler, scheduler, dist_model,
                                           args, tb_writer=tb_writer)
    return plugin_train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, run,
                                  tb_writer=tb_writer)


def pt_load(file_path, map_location=None):
    run = _run
    resuming = run is not None and run.active and file_path == run.args.resume
    if resuming and isinstance(file_path, str) and "://" not in file_path:
        file_path = run.args.resume = ckpt.resumable_path(file_path, oc_main.LATEST_CHECKPOINT_NAME)
    checkpoint = UPSTREAM["pt_load"](file_path, map_location=map_location)
    if resuming and run.model_shapes:
        check_resume_matches(checkpoint, run.model_shapes, file_path)
    if run is not None and isinstance(checkpoint, dict) and "dive" in checkpoint:
        run.resume = checkpoint["dive"]
    return checkpoint


def get_latest_checkpoint(path: str, remote: bool):
    if remote:
        return UPSTREAM["get_latest_checkpoint"](path, remote)
    return ckpt.latest_checkpoint(path)


def setup_logging(log_file, level, include_host=False):
    # open_clip adds root handlers on every main() call; drop the previous call's first
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    result = UPSTREAM["setup_logging"](log_file, level, include_host)
    if _run is not None:
        for note_level, message in _run.notes:
            logging.log(note_level, message)
        _run.notes = []
    return result


# --- torch as open_clip_train.main sees it ----------------------------------------------------------
class _ModuleView(types.ModuleType):
    """A module that is `base` except for a few attributes."""

    def __init__(self, base, **overrides):
        super().__init__(base.__name__)
        self.__dict__.update(overrides)
        self._base = base

    def __getattr__(self, name):
        return getattr(self._base, name)


class CPUFriendlyDDP(torch.nn.parallel.DistributedDataParallel):
    """open_clip passes device_ids=[device] even for CPU modules, which DDP rejects."""

    def __init__(self, module, device_ids=None, *args, **kwargs):
        if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
            device_ids = None
        super().__init__(module, device_ids, *args, **kwargs)


def save_checkpoint(obj, f, *args, **kwargs):
    """main()'s torch.save: atomic, and a training checkpoint also carries the plugin's state."""
    if isinstance(obj, dict) and "state_dict" in obj and "epoch" in obj and _run is not None and _run.active:
        obj = {**obj, "dive": _run.state(step_in_epoch=0)}
        check_weights(obj["state_dict"], os.fspath(f) if isinstance(f, (str, os.PathLike)) else "the checkpoint")
    if isinstance(f, (str, os.PathLike)):
        ckpt.atomic_save(obj, os.fspath(f), save=lambda o, p: torch.save(o, p, *args, **kwargs))
    else:
        torch.save(obj, f, *args, **kwargs)


def _horovod_sampler_class():
    """DistributedSampler that takes rank / world size from Horovod when torch.distributed is not used."""
    base = UPSTREAM["DistributedSampler"]

    class HorovodAwareSampler(base):
        def __init__(self, dataset, num_replicas=None, rank=None, *args, **kwargs):
            if num_replicas is None and not torch.distributed.is_initialized():
                try:
                    import horovod.torch as hvd

                    if hvd.is_initialized():
                        num_replicas, rank = hvd.size(), hvd.rank()
                except ImportError:
                    pass
            super().__init__(dataset, num_replicas, rank, *args, **kwargs)

    return HorovodAwareSampler


_MAIN_NAMES = ("parse_args", "init_distributed_device", "create_model_and_transforms", "get_data", "create_loss",
               "train_one_epoch", "pt_load", "get_latest_checkpoint", "setup_logging")


def _hooks():
    """open_clip_train.hooks when open_clip carries patches/open_clip-3.3.0-dive-hooks.patch, else None."""
    try:
        from open_clip_train import hooks
    except ImportError:
        return None
    return hooks if getattr(hooks, "API_VERSION", None) == 1 else None


def install():
    """Put the plugin into open_clip_train.main (idempotent): through the hook registry of a patched open_clip,
    otherwise by rebinding the names main() calls."""
    if UPSTREAM:
        return
    for name in _MAIN_NAMES:
        UPSTREAM[name] = getattr(oc_main, name)
    hooks = _hooks()
    if hooks is not None:  # the patch also fixes CPU DDP, the Horovod sampler and atomic saves
        g = globals()
        for name in _MAIN_NAMES:
            hooks.register(name, g[name])
        hooks.register("save_checkpoint", save_checkpoint)
        UPSTREAM["hooks"] = hooks
        return
    UPSTREAM["torch"] = oc_main.torch
    UPSTREAM["DistributedSampler"] = oc_data.DistributedSampler
    g = globals()
    for name in _MAIN_NAMES:
        setattr(oc_main, name, g[name])
    ddp = _ModuleView(torch.nn.parallel, DistributedDataParallel=CPUFriendlyDDP)
    oc_main.torch = _ModuleView(torch, nn=_ModuleView(torch.nn, parallel=ddp), save=save_checkpoint)
    oc_data.DistributedSampler = _horovod_sampler_class()


def uninstall():
    """Put open_clip's own functions back (tests use this to compare against plain open_clip)."""
    if not UPSTREAM:
        return
    if "hooks" in UPSTREAM:
        for name in _MAIN_NAMES + ("save_checkpoint",):
            UPSTREAM["hooks"].unregister(name)
        UPSTREAM.clear()
        return
    for name in _MAIN_NAMES:
        setattr(oc_main, name, UPSTREAM[name])
    oc_main.torch = UPSTREAM["torch"]
    oc_data.DistributedSampler = UPSTREAM["DistributedSampler"]
    UPSTREAM.clear()
