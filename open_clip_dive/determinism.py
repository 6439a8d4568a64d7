"""Train-mode stochasticity off: difference vectors measure how the weights moved, nothing else.

The frozen model runs in eval mode. Losses that compare the trainable model with it (DiVE, AVL, PVL, SnD, ...)
need the trainable model's features without dropout, drop-path, patch dropout or BatchNorm batch statistics,
or every difference vector carries noise that is not fine-tuning: with MiniLM's dropout 0.1, ||v||^2 was 0.15 at
step 0, two thirds of what AVL read over the whole run. The switch is the one torch already has: the trainable
model runs in eval mode, which turns off every stochastic layer that honours `module.training` (torch dropout,
timm DropPath, open_clip PatchDropout, Hugging Face attention dropout); gradients flow as usual. It covers the
whole step, ID part included, so DDP sees one forward and all methods of a comparison can run alike (the
paper's CLIP ViT-B/16 has no stochastic layer, so this is the model the paper trains).
"""

import torch
from torch import nn

from .errors import DiveUsageError


def set_train_mode(model: nn.Module, bn_eval: bool, deterministic: bool = False):
    """model.train(), or eval mode when `deterministic`; BatchNorm layers follow `bn_eval` either way."""
    model.train(not deterministic)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(not bn_eval)


def eval_mode_costs(model: nn.Module, grad_checkpointing: bool) -> list:
    """What eval mode turns off besides the randomness: Hugging Face layers checkpoint activations only in train
    mode, so --grad-checkpointing stops saving memory on them (open_clip's and timm's towers keep it)."""
    hf_layers = {type(m).__name__ for m in model.modules() if hasattr(type(m), "gradient_checkpointing")}
    if not grad_checkpointing or not hf_layers:
        return []
    return [f"--grad-checkpointing has no effect on the Hugging Face layers ({', '.join(sorted(hf_layers))}) while "
            "--dive-deterministic runs the model in eval mode (they checkpoint only in train mode): expect more "
            "activation memory there"]


def _probe_inputs(model: nn.Module, device):
    visual = getattr(model, "visual", None)
    size = getattr(visual, "image_size", 224)
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    context = getattr(model, "context_length", None) or 77
    images = torch.linspace(-1, 1, 2 * 3 * size[0] * size[1], device=device).reshape(2, 3, *size)
    texts = torch.arange(1, 2 * context + 1, device=device).reshape(2, context) % 1000 + 1
    return images, texts


def _close(a, b) -> bool:
    # a tolerance, not bitwise: some CUDA kernels are not bitwise reproducible; dropout noise is far larger
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-5)
    return True


@torch.no_grad()
def check_deterministic(model: nn.Module, bn_eval: bool, flag: str = "--dive-deterministic"):
    """Run the model twice in the mode the step will use. The first module (innermost first) whose inputs agree
    between the two runs but whose output does not is random even in eval mode, and is refused by name.
    Leaves the RNGs and the model's mode as they were."""
    first = next(model.parameters())
    was_training = {m: m.training for m in model.modules()}
    calls = [[], []]  # per run: (name, module, inputs, output) in the order modules return
    run = [0]

    def record(name):
        def hook(module, inputs, output):
            tensors = tuple(t.detach().clone() for t in inputs if isinstance(t, torch.Tensor))
            if isinstance(output, torch.Tensor):
                calls[run[0]].append((name, module, tensors, output.detach().clone()))
        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in model.named_modules() if name]
    devices = [first.device] if first.device.type == "cuda" else []
    try:
        set_train_mode(model, bn_eval, deterministic=True)
        images, texts = _probe_inputs(model, first.device)
        with torch.random.fork_rng(devices=devices):
            for run[0] in (0, 1):
                torch.manual_seed(run[0])
                model(images.to(first.dtype), texts)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in was_training.items():
            module.training = training
    for (name, module, inputs_a, out_a), (_, _, inputs_b, out_b) in zip(*calls):
        same_inputs = len(inputs_a) == len(inputs_b) and all(map(_close, inputs_a, inputs_b))
        if same_inputs and not _close(out_a, out_b):
            raise DiveUsageError(
                f"{flag}: module '{name}' ({type(module).__name__}) is random even in eval mode, so difference "
                "vectors would carry its noise; make it honour module.training, or pass "
                f"--no-{flag[2:]} (and accept noisy difference vectors)")
