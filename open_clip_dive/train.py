"""The training step: one forward of the trainable model over [ID; reference], the frozen model on the
reference part, the registry loss on both; open_clip's optimizer step, logging and schedule otherwise.

Follows open_clip_train.train.train_one_epoch's behaviour (schedule per step, autocast, GradScaler,
Horovod synchronize, gradient clipping, logit-scale clamp, log format) so that `--loss clip` trains
exactly as open_clip does; adds the reference batch, the EMA hook, mid-epoch resume and preemption.
"""

import logging
import math
import os
import time

import torch
from open_clip_train.distributed import is_master
from open_clip_train.precision import get_autocast
from open_clip_train.train import AverageMeter, backward, unwrap_model
from open_clip.model import get_input_dtype


try:
    import wandb
except ImportError:
    wandb = None


class Preempted(Exception):
    """Raised after a preemption checkpoint is written; main() exits with EXIT_PREEMPTED."""

    def __init__(self, path):
        super().__init__(f"preempted: checkpoint written to {path}")
        self.path = path


EXIT_PREEMPTED = 75  # EX_TEMPFAIL: try again (the sbatch script requeues on it)


def _concat(a, b):
    return torch.cat([a, b]) if b is not None else a


def _split_outputs(model_out, id_batch: int, with_reference: bool):
    """ID features under open_clip's names, reference ones as ref_*; everything else passed through."""
    if not with_reference:
        return dict(model_out)
    inputs = dict(model_out)
    for name in ("image_features", "text_features"):
        features = model_out[name]
        inputs[name], inputs[f"ref_{name}"] = features[:id_batch], features[id_batch:]
    return inputs


def _optimizer_step(model, optimizer, scaler, args):
    if scaler is not None:
        if args.horovod:
            optimizer.synchronize()
            scaler.unscale_(optimizer)
            if args.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip_norm, norm_type=2.0)
            with optimizer.skip_synchronize():
                scaler.step(optimizer)
        else:
            if args.grad_clip_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip_norm, norm_type=2.0)
            scaler.step(optimizer)
        scaler.update()
    else:
        if args.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip_norm, norm_type=2.0)
        optimizer.step()


def _unpack(batch):
    return (batch[0], batch[1], batch[2]) if len(batch) == 3 else (batch[0], batch[1], None)


def train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, run, tb_writer=None):
    device = torch.device(args.device)
    autocast = get_autocast(args.precision, device_type=device.type)
    input_dtype = get_input_dtype(args.precision)
    with_reference = run.reference_stream is not None
    frozen = run.reference

    model.train()
    loss.train()
    if args.distill:
        dist_model.eval()

    data["train"].set_epoch(epoch)
    dataloader = data["train"].dataloader
    num_batches_per_epoch = dataloader.num_batches
    sample_digits = math.ceil(math.log(dataloader.num_samples + 1, 10))
    skip = run.begin_epoch(epoch)

    losses_m = {}
    batch_time_m = AverageMeter()
    data_time_m = AverageMeter()
    end = time.time()
    for i, batch in enumerate(dataloader):
        if i < skip:  # resuming mid-epoch: the same data, already trained on
            if i == skip - 1:
                run.restore_rng()
            end = time.time()
            continue
        step = num_batches_per_epoch * epoch + i
        if not args.skip_scheduler:
            scheduler(step)

        images, texts, keys = _unpack(batch)
        ref_images = ref_texts = ref_keys = None
        if with_reference:
            ref_images, ref_texts, ref_keys = _unpack(next(run.reference_stream))
        id_batch = images.shape[0]
        all_images = _concat(images, ref_images).to(device=device, dtype=input_dtype, non_blocking=True)
        all_texts = _concat(texts, ref_texts).to(device=device, non_blocking=True)

        data_time_m.update(time.time() - end)
        optimizer.zero_grad()

        with autocast():
            model_out = model(all_images, all_texts)
            logit_scale = model_out["logit_scale"]
            inputs = _split_outputs(model_out, id_batch, with_reference)
            if frozen is not None:
                inputs["ref0_image_features"], inputs["ref0_text_features"] = frozen(
                    all_images[id_batch:], all_texts[id_batch:])
            if args.distill:
                with torch.no_grad():
                    dist_model_out = dist_model(all_images[:id_batch], all_texts[:id_batch])
                inputs.update({f"dist_{k}": v for k, v in dist_model_out.items()})
            losses = loss(**inputs, output_dict=True)
            total_loss = sum(losses.values())
            losses["loss"] = total_loss

        backward(total_loss, scaler)
        _optimizer_step(model, optimizer, scaler, args)
        if hasattr(loss, "on_optimizer_step"):
            loss.on_optimizer_step()

        # Note: clamp to ln(100), as open_clip (and CLIP) do.
        with torch.no_grad():
            unwrap_model(model).logit_scale.clamp_(0, math.log(100))

        run.record_keys(keys, ref_keys)
        batch_time_m.update(time.time() - end)
        end = time.time()
        batch_count = i + 1
        if is_master(args) and (i % args.log_every_n_steps == 0 or batch_count == num_batches_per_epoch):
            _log_step(args, losses, losses_m, logit_scale, optimizer, dataloader, batch_count, id_batch,
                      num_batches_per_epoch, sample_digits, batch_time_m, data_time_m, epoch, step, tb_writer,
                      run.extra_metrics(loss))
            batch_time_m.reset()
            data_time_m.reset()

        if run.preemption_requested():
            path = run.save_preemption_checkpoint(model, optimizer, scaler, epoch, batch_count)
            raise Preempted(path)
    run.end_epoch(model, epoch)


def _log_step(args, losses, losses_m, logit_scale, optimizer, dataloader, batch_count, batch_size,
              num_batches_per_epoch, sample_digits, batch_time_m, data_time_m, epoch, step, tb_writer, extra):
    num_samples = batch_count * batch_size * args.world_size
    samples_per_epoch = dataloader.num_samples
    percent_complete = 100.0 * batch_count / num_batches_per_epoch
    for key, val in losses.items():
        losses_m.setdefault(key, AverageMeter()).update(val.item(), batch_size)
    logit_scale_scalar = logit_scale.item()
    loss_log = " ".join(f"{name.capitalize()}: {m.val:#.5g} ({m.avg:#.5g})" for name, m in losses_m.items())
    samples_per_second = args.batch_size * args.world_size / batch_time_m.val
    samples_per_second_per_gpu = args.batch_size / batch_time_m.val
    logging.info(
        f"Train Epoch: {epoch} [{num_samples:>{sample_digits}}/{samples_per_epoch} ({percent_complete:.0f}%)] "
        f"Data (t): {data_time_m.avg:.3f} "
        f"Batch (t): {batch_time_m.avg:.3f}, {samples_per_second:#g}/s, {samples_per_second_per_gpu:#g}/s/gpu "
        f"LR: {optimizer.param_groups[0]['lr']:5f} "
        f"Logit Scale: {logit_scale_scalar:.3f} " + loss_log
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
