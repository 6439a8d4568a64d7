"""Three `ce` / `car-ft` steps on 2 ranks x batch b, or on 1 rank x batch 2b, over the same samples: writes the head's
and the image tower's gradients and the head after each step (the head is a loss parameter the glue registers on the
model, so DDP and Horovod must average its gradient like any weight's).

    python tests/dist_equivalence_head.py OUT single LOSS
    torchrun --nproc_per_node 2 tests/dist_equivalence_head.py OUT ddp LOSS
    horovodrun -np 2 --gloo python tests/dist_equivalence_head.py OUT horovod LOSS
"""

import argparse
import copy
import os
import sys

import open_clip
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import COLOURS, TINY_MODEL_CFG  # noqa: E402
from open_clip_dive.loss_setup import prepare_loss  # noqa: E402
from open_clip_dive.losses import CARFTLoss, CrossEntropyLoss  # noqa: E402
from open_clip_dive.prompts import load_templates  # noqa: E402
from open_clip_dive.reference import frozen_copy  # noqa: E402
from open_clip_dive.train import TrainingStep  # noqa: E402

GLOBAL_BATCH = 8


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g),
            "text": torch.randint(1, 1000, (GLOBAL_BATCH, 32), generator=g),
            "label": torch.randint(0, 4, (GLOBAL_BATCH,), generator=g)}


def main():
    out, mode, loss_name = sys.argv[1], sys.argv[2], sys.argv[3]
    open_clip.add_model_config(os.path.join(out, "dive-tiny.json"))
    torch.manual_seed(0)
    pretrained = open_clip.model.CLIP(**TINY_MODEL_CFG, output_dict=True)
    model = copy.deepcopy(pretrained)
    names, templates = COLOURS[:4], load_templates("simple")
    loss = CrossEntropyLoss(names, templates) if loss_name == "ce" else CARFTLoss(names, templates, weight=5.0)
    args = argparse.Namespace(device="cpu", precision="fp32", distill=False, horovod=mode == "horovod",
                              grad_clip_norm=None, rank=0, world_size=1, model="dive-tiny", cache_dir=None,
                              force_context_length=None)
    prepare_loss(loss, model, args)
    rank, world = 0, 1
    if mode == "ddp":
        torch.distributed.init_process_group("gloo")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        model = torch.nn.parallel.DistributedDataParallel(model)
    elif mode == "horovod":
        import horovod.torch as hvd

        hvd.init()
        rank, world = hvd.rank(), hvd.size()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    if mode == "horovod":
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    step = TrainingStep(model, loss, args, frozen=frozen_copy(pretrained))
    part = GLOBAL_BATCH // world
    records = []
    for i in range(3):
        mine = {k: v[rank * part:(rank + 1) * part] for k, v in batch(10 + i).items()}
        step([(mine, None)], optimizer, None)
        grads = {n.replace("module.", ""): p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        records.append({"grads": grads, "head": loss.head.weight.detach().clone()})
    torch.save(records, os.path.join(out, f"{mode}_rank{rank}.pt"))


if __name__ == "__main__":
    main()
