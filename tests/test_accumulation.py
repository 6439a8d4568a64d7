"""`--accum-freq N` x b gives the same losses, gradients and EMA as one batch of N*b, for every loss."""

import argparse
import copy

import open_clip
import pytest
import torch

from helpers import TINY_MODEL_CFG
from open_clip_dive.losses import create_loss
from open_clip_dive.params import plugin_defaults
from open_clip_dive.reference import frozen_copy
from open_clip_dive.train import TrainingStep


def make_args(loss):
    return argparse.Namespace(**plugin_defaults() | dict(
                              device="cpu", precision="fp32", distill=False, horovod=False, grad_clip_norm=None,
                              local_loss=False, gather_with_grad=False, rank=0, world_size=1, siglip=False,
                              model="dive-tiny", loss=loss, dive_avl_weight=10.0, dive_pvl_weight=10.0,
                              dive_ema_momentum=0.9, dive_replay_weight=1.0))


def batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, 32, 32, generator=g), "text": torch.randint(1, 1000, (n, 32), generator=g)}


def split(b, parts):
    n = b["image"].shape[0] // parts
    return [{k: v[i * n:(i + 1) * n] for k, v in b.items()} for i in range(parts)]


def run_step(model, loss_name, micro_batches):
    args = make_args(loss_name)
    loss = create_loss(args)
    frozen = frozen_copy(pretrained, "fp32")
    model.train()
    step = TrainingStep(model, loss, args, frozen=frozen)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    losses, _ = step(micro_batches, optimizer, None)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    ema = loss.average.ema.clone() if getattr(loss, "average", None) is not None else None
    return losses, grads, ema


torch.manual_seed(0)
pretrained = open_clip.model.CLIP(**TINY_MODEL_CFG, output_dict=True)
finetuned = copy.deepcopy(pretrained)
with torch.no_grad():  # move away from the frozen copy so the reference terms are not zero
    for p in finetuned.parameters():
        p.add_(0.01 * torch.randn_like(p))


@pytest.mark.parametrize("loss_name", ["flyp", "dive", "avl", "pvl", "snd"])
def test_accumulated_step_matches_one_big_batch(loss_name):
    id_batch, ref_batch = batch(8, 1), batch(8, 2)
    uses_ref = loss_name != "flyp"
    big_losses, big_grads, big_ema = run_step(copy.deepcopy(finetuned), loss_name,
                                              [(id_batch, ref_batch if uses_ref else None)])
    micro = list(zip(split(id_batch, 4), split(ref_batch, 4) if uses_ref else [None] * 4))
    acc_losses, acc_grads, acc_ema = run_step(copy.deepcopy(finetuned), loss_name, micro)

    # the contrastive term sees all 8 samples both ways; it is the same value
    assert acc_losses["contrastive_loss"].item() == pytest.approx(big_losses["contrastive_loss"].item(), rel=1e-5)
    assert big_grads.keys() == acc_grads.keys() and len(big_grads) > 10
    for name, grad in big_grads.items():
        # float32 sums in another order: compare against the tensor's scale
        assert (acc_grads[name] - grad).abs().max() <= 1e-4 * grad.abs().max() + 1e-8, name
    if big_ema is not None:
        assert big_ema.norm() > 0
        assert torch.allclose(acc_ema, big_ema, atol=1e-7)
