"""One DiVE step on 2 ranks x batch b, or on 1 rank x batch 2b, over the same samples: writes what each saw.

    python tests/dist_equivalence.py OUT single            # one process, the whole batch
    torchrun --nproc_per_node 2 tests/dist_equivalence.py OUT ddp
    horovodrun -np 2 --gloo python tests/dist_equivalence.py OUT horovod
"""

import argparse
import copy
import os
import sys

import open_clip
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import TINY_MODEL_CFG  # noqa: E402
from open_clip_dive.losses import create_loss  # noqa: E402
from open_clip_dive.params import plugin_defaults
from open_clip_dive.reference import frozen_copy  # noqa: E402
from open_clip_dive.train import TrainingStep  # noqa: E402

GLOBAL_BATCH = 8


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g),
            "text": torch.randint(1, 1000, (GLOBAL_BATCH, 32), generator=g)}


def main():
    out, mode = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    pretrained = open_clip.model.CLIP(**TINY_MODEL_CFG, output_dict=True)
    model = copy.deepcopy(pretrained)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    rank, world = 0, 1
    if mode == "ddp":
        torch.distributed.init_process_group("gloo")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        model = torch.nn.parallel.DistributedDataParallel(model)
    elif mode == "horovod":
        import horovod.torch as hvd

        hvd.init()
        rank, world = hvd.rank(), hvd.size()
    args = argparse.Namespace(**plugin_defaults() | dict(
                              device="cpu", precision="fp32", distill=False, horovod=mode == "horovod",
                              grad_clip_norm=None, local_loss=True, gather_with_grad=True, rank=rank, world_size=world,
                              siglip=False, model="tiny", loss="dive", dive_avl_weight=10.0, dive_pvl_weight=10.0,
                              dive_ema_momentum=0.9))
    loss = create_loss(args)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    if mode == "horovod":
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    step = TrainingStep(model, loss, args, frozen=frozen_copy(pretrained))
    part = GLOBAL_BATCH // world
    records = []
    for i in range(3):  # three steps: the EMA and the weights must follow the same path
        id_batch, ref_batch = batch(10 + i), batch(100 + i)
        mine = lambda b: {k: v[rank * part:(rank + 1) * part] for k, v in b.items()}  # noqa: E731
        losses, _ = step([(mine(id_batch), mine(ref_batch))], optimizer, None)
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        records.append({"losses": {k: v.detach() for k, v in losses.items()}, "grads": grads,
                        "ema": loss.average.ema.clone()})
    torch.save(records, os.path.join(out, f"{mode}_rank{rank}.pt"))


if __name__ == "__main__":
    main()
