"""The training step: one forward of the trainable model over [ID; reference], the frozen model (or its
cached embeddings) on the batch the loss declares (`frozen_batch`: the reference part or the ID part), the
registry loss on both; open_clip's optimizer step.

`train_one_epoch` follows open_clip_train.train.train_one_epoch (schedule per step, autocast, GradScaler,
Horovod synchronize, gradient clipping, logit-scale clamp, log format), so `--loss clip` trains exactly as
open_clip does, and adds the reference batch, accumulation for every loss, mid-epoch resume and preemption.
"""

import itertools
import logging
import math
import time

import torch
from open_clip.model import get_input_dtype
from open_clip_train.distributed import is_master
from open_clip_train.precision import get_autocast
from open_clip_train.train import AverageMeter, backward, unwrap_model

from .determinism import set_train_mode
from .finite import check_losses
from .losses import frozen_batch, image_tower_only, in_batch_negatives, needs_labels
from .raw_features import RawFeatureTap
from .speed import channels_last, cut_padding, has_channels_last_images, text_padding_id

try:
    import wandb
except ImportError:
    wandb = None

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: try again (the sbatch script requeues on it)
_SCALARS = ("logit_scale", "logit_bias")


class Preempted(Exception):
    """Raised after a preemption checkpoint is written; main() exits with EXIT_PREEMPTED."""

    def __init__(self, path):
        super().__init__(f"preempted: checkpoint written to {path}" if path else
                         "preempted: no checkpoint written (--logs none)")
        self.path = path


def as_batch(batch) -> dict:
    """open_clip's (images, texts) tuples and the plugin's dict batches, as a dict."""
    return batch if isinstance(batch, dict) else {"image": batch[0], "text": batch[1]}


class TrainingStep:
    """One optimizer step over one or more micro-batches (`--accum-freq`), each an ID batch and, for
    reference losses, a reference batch.

    With accumulation the contrastive term follows open_clip's scheme (features of the other micro-batches
    cached without gradients as negatives) and the reference terms, which are per-sample means, are
    averaged over the micro-batches; the EMA vector moves once per optimizer step.
    """

    def __init__(self, model, loss, args, frozen=None, dist_model=None):
        self.model, self.loss, self.args, self.frozen, self.dist_model = model, loss, args, frozen, dist_model
        self.device = torch.device(args.device)
        self.autocast = get_autocast(args.precision, device_type=self.device.type)
        self.input_dtype = get_input_dtype(args.precision)
        bare = unwrap_model(model)
        self.pad_id, self.channels_last = text_padding_id(bare), has_channels_last_images(bare)

    def _inputs(self, batch, ref):
        images = batch["image"]
        texts = None if image_tower_only(self.loss) else batch["text"]  # a classifier loss runs the image tower only
        if ref is not None:
            images, texts = torch.cat([images, ref["image"]]), torch.cat([texts, ref["text"]])
        images = images.to(device=self.device, dtype=self.input_dtype, non_blocking=True)
        texts = None if texts is None else cut_padding(texts, self.pad_id).to(device=self.device, non_blocking=True)
        return (channels_last(images) if self.channels_last else images), texts

    def _loss_inputs(self, model_out, batch, ref, images, texts, raw=None):
        """Split [ID; reference] outputs into open_clip's names and ref_*; add the frozen model's outputs on the batch
        the loss declares (ref0_* on the reference batch, id0_* on the ID batch) and the class labels it asks for.
        `raw`: the trainable model's raw features, when the loss compares reference features unnormalised."""
        inputs = dict(model_out)
        n = batch["image"].shape[0]
        if ref is not None:
            for name in ("image_features", "text_features"):
                inputs[name], inputs[f"ref_{name}"] = model_out[name][:n], (raw or model_out)[name][n:]
        where = frozen_batch(self.loss)
        if where == "reference" and ref is not None:
            if "ref0_image_features" in ref:  # cached by tools.cache_reference
                for name in ("ref0_image_features", "ref0_text_features"):
                    inputs[name] = ref[name].to(self.device, non_blocking=True)
            elif self.frozen is not None:
                inputs["ref0_image_features"], inputs["ref0_text_features"] = self.frozen(
                    images[n:], texts[n:], normalize=raw is None)
        elif where == "id" and self.frozen is not None:
            # the loss may choose the texts the frozen model reads with the ID images (Lipsum-FT: random texts)
            frozen_texts = getattr(self.loss, "frozen_id_texts", None)
            frozen_texts = cut_padding(frozen_texts(batch["text"]), self.pad_id) if frozen_texts else \
                (None if texts is None else texts[:n])
            inputs["id0_image_features"], inputs["id0_text_features"] = self.frozen(images[:n], frozen_texts)
        if needs_labels(self.loss):
            inputs["labels"] = batch["label"].to(self.device, non_blocking=True)
        return inputs

    def _forward_model(self, images, texts, ref):
        """The trainable model's outputs, and its raw features where the loss reads reference features raw."""
        if ref is None or getattr(self.loss, "reference_space", "normalized") != "raw":
            return self.model(images, texts), None
        with RawFeatureTap(unwrap_model(self.model)) as tap:
            return self.model(images, texts), tap.raw

    def forward(self, batch, ref=None, id_features=None, position=0):
        """Losses of one micro-batch (gradients flow through this micro-batch only). `id_features`: the
        other micro-batches' cached ID outputs, concatenated around this one's at `position`."""
        images, texts = self._inputs(batch, ref)
        with self.autocast():
            model_out, raw = self._forward_model(images, texts, ref)
            inputs = self._loss_inputs(model_out, batch, ref, images, texts, raw)
            if id_features is not None:
                for key, cached in id_features.items():
                    inputs[key] = torch.cat(cached[:position] + [inputs[key]] + cached[position + 1:])
                if position > 0:
                    # every micro-batch's loss depends on the temperature in full: let only the first backward
                    # carry its gradient (open_clip 3.3 lets all N do it, an N-times too large logit_scale step)
                    for key in _SCALARS:
                        if key in inputs:
                            inputs[key] = inputs[key].detach()
            if self.args.distill:
                with torch.no_grad():
                    n = batch["image"].shape[0]
                    # the teacher gets the full-length tokens: its text tower may need them (speed.py)
                    texts_full = batch["text"].to(self.device, non_blocking=True)
                    inputs.update({f"dist_{k}": v for k, v in self.dist_model(images[:n], texts_full).items()})
            losses = self.loss(**inputs, output_dict=True)
        return losses, model_out["logit_scale"]

    @torch.no_grad()
    def _cache_id_features(self, micro_batches):
        cached = {}
        for batch, _ in micro_batches:
            images, texts = self._inputs(batch, None)
            with self.autocast():
                out = self.model(images, texts)
            for key, value in out.items():
                if key not in _SCALARS:
                    cached.setdefault(key, []).append(value)
        return cached

    def _backward(self, losses, num_micro_batches):
        # contrastive ID terms already see the whole step's batch (cached features); per-sample means are averaged
        id_keys = getattr(self.loss, "id_keys", None) if in_batch_negatives(self.loss) else ()
        total = sum(v if id_keys is None or k in id_keys else v / num_micro_batches for k, v in losses.items())
        backward(total, self.scaler)
        losses["loss"] = sum(losses.values())

    def __call__(self, micro_batches, optimizer, scaler):
        """micro_batches: [(id_batch, ref_batch or None)]; returns (losses of the last micro-batch, logit_scale)."""
        self.scaler = scaler
        optimizer.zero_grad()
        if len(micro_batches) == 1 or not in_batch_negatives(self.loss):
            for batch, ref in micro_batches:
                losses, logit_scale = self.forward(batch, ref)
                self._backward(losses, len(micro_batches))
        else:
            cached = self._cache_id_features(micro_batches)
            for j, (batch, ref) in enumerate(micro_batches):
                losses, logit_scale = self.forward(batch, ref, cached, j)
                self._backward(losses, len(micro_batches))
        self.optimizer_step(optimizer, scaler)
        if hasattr(self.loss, "on_optimizer_step"):
            self.loss.on_optimizer_step()
        with torch.no_grad():  # clamp to ln(100), as open_clip (and CLIP) do
            unwrap_model(self.model).logit_scale.clamp_(0, math.log(100))
        return losses, logit_scale

    def _parameters(self):
        """The model's parameters and the loss's own (a classification head), each once, for gradient clipping."""
        params = {id(p): p for p in self.model.parameters()}
        if self.loss is not None:
            params.update((id(p), p) for p in self.loss.parameters() if id(p) not in params)
        return list(params.values())

    def optimizer_step(self, optimizer, scaler):
        args = self.args
        params = self._parameters() if args.grad_clip_norm is not None else None
        if scaler is not None:
            if args.horovod:
                optimizer.synchronize()
                scaler.unscale_(optimizer)
                if args.grad_clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, args.grad_clip_norm, norm_type=2.0)
                with optimizer.skip_synchronize():
                    scaler.step(optimizer)
            else:
                if args.grad_clip_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, args.grad_clip_norm, norm_type=2.0)
                scaler.step(optimizer)
            scaler.update()
        else:
            if args.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, args.grad_clip_norm, norm_type=2.0)
            optimizer.step()


def train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, run, tb_writer=None):
    set_train_mode(model, run.bn_eval, run.deterministic)
    loss.train()
    if args.distill:
        dist_model.eval()
    step_fn = TrainingStep(model, loss, args, frozen=run.reference, dist_model=dist_model)

    data["train"].set_epoch(epoch)
    dataloader = data["train"].dataloader
    accum = args.accum_freq
    num_batches_per_epoch = dataloader.num_batches // accum
    sample_digits = math.ceil(math.log(dataloader.num_samples + 1, 10))
    skip = run.begin_epoch(epoch) * accum  # resuming mid-epoch: ID batches already trained on

    losses_m = {}
    batch_time_m = AverageMeter()
    data_time_m = AverageMeter()
    micro_batches = []
    end = time.time()
    batches = iter(dataloader)
    for i in itertools.count():
        fetched = _fetch(batches, run.reference_stream if i >= skip else None)
        if fetched is None:
            break
        batch, ref, failure = fetched
        run.agree_on_data(failure, model, optimizer, scaler, epoch)
        if i < skip:
            if i == skip - 1:
                run.restore_rng()
            end = time.time()
            continue
        batch, ref = as_batch(batch), None if ref is None else as_batch(ref)
        micro_batches.append((batch, ref))
        if len(micro_batches) < accum:
            continue
        i_accum = i // accum
        step = num_batches_per_epoch * epoch + i_accum
        if not args.skip_scheduler:
            scheduler(step)
        data_time_m.update(time.time() - end)

        losses, logit_scale = step_fn(micro_batches, optimizer, scaler)
        check_losses(losses, epoch, step, args)
        run.steps_done = i_accum + 1
        run.record_keys(micro_batches)
        micro_batches = []

        batch_time_m.update(time.time() - end)
        end = time.time()
        batch_count = i_accum + 1
        if is_master(args) and (i_accum % args.log_every_n_steps == 0 or batch_count == num_batches_per_epoch):
            _log_step(args, losses, losses_m, logit_scale, optimizer, dataloader, batch_count,
                      batch["image"].shape[0], num_batches_per_epoch, sample_digits, batch_time_m, data_time_m,
                      epoch, step, tb_writer, run.extra_metrics(loss))
            batch_time_m.reset()
            data_time_m.reset()

        if run.preemption_requested():
            path = run.save_preemption_checkpoint(model, optimizer, scaler, epoch, batch_count)
            raise Preempted(path)
    run.end_epoch(model, epoch)


def _fetch(batches, reference_stream):
    """(ID batch, reference batch or None, None), (None, None, the error) when a fetch failed (bad data in a later
    shard, a loader worker that died), or None at the end of the epoch."""
    try:
        batch = next(batches)
    except StopIteration:
        return None
    except Exception as e:
        return None, None, e
    try:
        return batch, None if reference_stream is None else next(reference_stream), None
    except Exception as e:
        return None, None, e


def _log_step(args, losses, losses_m, logit_scale, optimizer, dataloader, batch_count, batch_size,
              num_batches_per_epoch, sample_digits, batch_time_m, data_time_m, epoch, step, tb_writer, extra):
    num_samples = batch_count * batch_size * args.accum_freq * args.world_size
    samples_per_epoch = dataloader.num_samples
    percent_complete = 100.0 * batch_count / num_batches_per_epoch
    for key, val in losses.items():
        losses_m.setdefault(key, AverageMeter()).update(val.item(), batch_size)
    logit_scale_scalar = logit_scale.item()
    loss_log = " ".join(f"{name.capitalize()}: {m.val:#.5g} ({m.avg:#.5g})" for name, m in losses_m.items())
    samples_per_second = args.accum_freq * args.batch_size * args.world_size / batch_time_m.val
    samples_per_second_per_gpu = args.accum_freq * args.batch_size / batch_time_m.val
    logging.info(
        f"Train Epoch: {epoch} [{num_samples:>{sample_digits}}/{samples_per_epoch} ({percent_complete:.0f}%)] "
        f"Data (t): {data_time_m.avg:.3f} "
        f"Batch (t): {batch_time_m.avg:.3f}, {samples_per_second:#g}/s, {samples_per_second_per_gpu:#g}/s/gpu "
        f"LR: {optimizer.param_groups[0]['lr']:5f} "
        f"Logit Scale: {logit_scale_scalar:.3f} " + loss_log
        + "".join(f" {name}: {val:.4g}" for name, val in extra.items())
    )
    log_data = {
        "data_time": data_time_m.val,
        "batch_time": batch_time_m.val,
        "samples_per_second": samples_per_second,
        "samples_per_second_per_gpu": samples_per_second_per_gpu,
        "scale": logit_scale_scalar,
        "lr": optimizer.param_groups[0]["lr"],
    }
    log_data.update({name: m.val for name, m in losses_m.items()})
    log_data.update(extra)
    log_data = {"train/" + name: val for name, val in log_data.items()}
    if tb_writer is not None:
        for name, val in log_data.items():
            tb_writer.add_scalar(name, val, step)
    if args.wandb:
        assert wandb is not None, "Please install wandb."
        log_data["step"] = step
        wandb.log(log_data, step=step)
