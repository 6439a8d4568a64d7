"""The speed paths of open_clip_dive/speed.py, alone and together, against the plain layout: FLYP and DiVE
training steps of the embedded default model (EfficientNet-Lite0 96 px + MiniLM-L6), side by side in one process.

Each configuration has its own copy of the model, frozen copy and open_clip AdamW; turns of `--steps-per-turn`
steps alternate in a shuffled order each round, after an untimed warm-up round. The step is the project's real
`TrainingStep` (registry loss, frozen copy, optimizer step) on one in-memory batch: class prompts of the
Fashion-MNIST task and reference-style captions, tokenized by the model's tokenizer (32 columns).

    OMP_NUM_THREADS=1 python benchmarks/speed_paths.py --rounds 5 --clock cpu

Configurations: plain (full-length tokens, contiguous convolutions, torch's default AdamW loop), each path
alone (cut padding, channels-last, fused AdamW) and all three (what training runs with --dive-fused-adamw).
Prints the median step time and its ratio to plain, per loss.
"""

import argparse
import copy
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from _common import machine_description, markdown_table, median  # noqa: E402
from step_time import create_optimizer, make_args  # noqa: E402

CONFIGS = {"plain": (), "cut padding": ("cut",), "channels-last": ("cl",), "fused AdamW": ("fused",),
           "all three": ("cut", "cl", "fused")}


def build(model_dir):
    import open_clip

    name = f"local-dir:{model_dir}"
    model, _, _ = open_clip.create_model_and_transforms(name, output_dict=True)
    return name, model, open_clip.get_tokenizer(name)


class Config:
    """One configuration's model, frozen copy, optimizer and a TrainingStep per loss."""

    def __init__(self, paths, base, args):
        from open_clip_dive.losses import create_loss
        from open_clip_dive.reference import frozen_copy
        from open_clip_dive.speed import channels_last_image_tower, use_fused_kernel
        from open_clip_dive.train import TrainingStep

        self.model = copy.deepcopy(base)
        if "cl" in paths:
            channels_last_image_tower(self.model)
        frozen = frozen_copy(self.model)
        self.model.eval()  # the benchmark recipe's --dive-deterministic (and BatchNorm frozen)
        self.optimizer, _ = create_optimizer(self.model, args["flyp"])
        if "fused" in paths:
            use_fused_kernel(self.optimizer)
        self.steps = {}
        for loss, a in args.items():
            step = TrainingStep(self.model, create_loss(a), a, frozen=frozen if loss == "dive" else None)
            if "cut" not in paths:
                step.pad_id = None
            self.steps[loss] = step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=None, help="the default model (default: built or cached as usual)")
    p.add_argument("--batch-size", type=int, default=16, help="B = B' (the mini benchmark's)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps-per-turn", type=int, default=2)
    p.add_argument("--clock", choices=["wall", "cpu"], default="cpu",
                   help="cpu: process CPU time, what a step costs on a free core (the machine may be shared)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from open_clip_dive.default.model import get_default_model_dir

    torch.manual_seed(a.seed)
    name, base, tokenizer = build(a.model_dir or get_default_model_dir())
    from open_clip_dive.default.data import TEMPLATES

    args = {loss: make_args(name, a.batch_size, "fp32", "cpu", loss, ref_batch=a.batch_size if loss == "dive" else None,
                            lr=1e-4) for loss in ("flyp", "dive")}
    args["dive"].dive_avl_weight = args["dive"].dive_pvl_weight = 0.1
    g = torch.Generator().manual_seed(a.seed)
    classes = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
    templates = TEMPLATES["clothing"]
    prompts = [templates[i % len(templates)].format(classes[i % len(classes)]) for i in range(a.batch_size)]
    captions = [f"an emoji of a {classes[i % 10]} next to a {classes[(3 * i + 1) % 10]}" for i in range(a.batch_size)]
    batch = {"image": torch.randn(a.batch_size, 3, 96, 96, generator=g), "text": tokenizer(prompts)}
    ref = {"image": torch.randn(a.batch_size, 3, 96, 96, generator=g), "text": tokenizer(captions)}
    configs = {label: Config(paths, base, args) for label, paths in CONFIGS.items()}
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    times = {(label, loss): [] for label in configs for loss in args}
    turns = list(times)
    rng = random.Random(a.seed)
    for r in range(a.rounds + 1):
        rng.shuffle(turns)
        for label, loss in turns:
            c = configs[label]
            for _ in range(a.steps_per_turn):
                start = clock()
                c.steps[loss]([(batch, ref if loss == "dive" else None)], c.optimizer, None)
                if r:  # round 0 warms up
                    times[(label, loss)].append(clock() - start)
        print(f"[speed_paths] round {r}/{a.rounds} done", file=sys.stderr)
    rows = []
    for loss in args:
        plain = median(times[("plain", loss)])
        for label in configs:
            t = median(times[(label, loss)])
            rows.append([loss, label, f"{1000 * t:.0f}", f"{plain / t:.2f}"])
    print(f"Machine: {machine_description('cpu')}; clock {a.clock}; B = B' = {a.batch_size}; "
          f"{a.rounds} rounds x {a.steps_per_turn} steps per configuration\n")
    print(markdown_table(["loss", "configuration", "step ms (median)", "speed-up over plain"], rows))


if __name__ == "__main__":
    main()
