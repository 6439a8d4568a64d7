"""CUDA correctness (issue 13, step 1): the plugin computes on DEVICE what it computes on the CPU.

    python benchmarks/gpu_check.py --device cuda --out "$OUT"     # on the GPU (benchmarks/gpu_session.sh runs it)
    python benchmarks/gpu_check.py --device cpu --quick            # dry run of the same path on a CPU (the tests)

Sections (each row of the table: PASS, FAIL, SKIP with its reason, or MEASURED: shown, not bounded):
  loss       every registry loss (list_losses()): its terms and the gradients of its inputs over two steps (its
             state, e.g. the EMA vector m, moves in between) on DEVICE against the CPU on the same inputs
  ema        DifferenceVectorEMA's update on DEVICE against the CPU; its saved state, loaded from a CPU checkpoint
             before or after `.to(DEVICE)`, lives on DEVICE and keeps updating there
  rng        the RNG state a checkpoint stores makes DEVICE's generator repeat its draws after a resume
  step       two `train.TrainingStep`s of the tiny model (open_clip's AdamW, the frozen copy, the registry loss) per
             loss: terms, gradients, parameter updates and loss state against the CPU's; then `placement`: every
             tensor of the model, its gradients, the optimizer state, the loss and the frozen model is on DEVICE
             (also on the `meta` device, where a CPU tensor mixed in fails like on CUDA: the CPU-side check)
  train      `python -m open_clip_dive.main --device DEVICE --precision amp_bf16 --dive-ref-precision bf16`, 30 steps
             (3 epochs) of DiVE on the tiny model: SIGUSR1 after 3 steps gives exit 75 and one mid-epoch
             checkpoint, `--resume latest` trains exactly the remaining steps and writes every epoch's checkpoint;
             the result against an uninterrupted run
  cache      `tools.cache_reference` on DEVICE against the CPU (same weights, same shards): embeddings, fingerprint

Errors are relative, ||a - b|| / ||b|| over all elements in float64 (a non-finite value never passes). fp32 runs
with TF32 off (open_clip's trainer turns it on; `train` keeps that): bound 1e-4. bf16 autocast has no fixed bound:
its error against the CPU's fp32 is printed, next to the CPU's own bf16 error (the `amp_bf16 (cpu)` rows), and DEVICE
passes when it is no further from fp32 than BF16_FACTOR times the CPU's bf16 (at least BF16_FLOOR).
"""

import argparse
import contextlib
import copy
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REPO, TINY_MODEL, TINY_MODEL_CFG, markdown_table, register_tiny_model  # noqa: E402

import step_time  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

FP32_TOL = 1e-4
BF16_FACTOR, BF16_FLOOR = 2.0, 1e-3  # a wrong kernel, dtype or placement under autocast is off by O(1), not 2x
ERRORS = ("terms", "grads", "updates", "state")
HEADERS = ["section", "case", "precision", "vs", *ERRORS, "bound", "devices", "result"]
B, B_REF, DIM = 8, 4, TINY_MODEL_CFG["embed_dim"]


# --- measures ------------------------------------------------------------------------------------------
def _flat(x):
    if isinstance(x, dict):
        x = [x[k] for k in sorted(x)]
    if isinstance(x, (list, tuple)):
        return torch.cat([_flat(t) for t in x]) if x else torch.zeros(0, dtype=torch.float64)
    return x.detach().to("cpu", torch.float64).reshape(-1)


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| (float64; the absolute error where b is all zero; inf for non-finite or mismatched a)."""
    if isinstance(a, dict) and isinstance(b, dict) and sorted(a) != sorted(b):
        return math.inf
    a, b = _flat(a), _flat(b)
    if a.shape != b.shape or not torch.isfinite(a).all():
        return math.inf
    norm = b.norm()
    return float((a - b).norm() / norm) if norm > 0 else float((a - b).norm())


def worst(pairs) -> float:
    """The largest rel_err over (a, b) pairs (e.g. one per step), each dict compared key by key."""
    errs = []
    for a, b in pairs:
        if isinstance(a, dict) and isinstance(b, dict):
            if sorted(a) != sorted(b):
                return math.inf
            errs += [rel_err(a[k], b[k]) for k in a]
        else:
            errs.append(rel_err(a, b))
    return max(errs, default=0.0)


def same_device(actual: torch.device, target: torch.device) -> bool:
    return actual.type == target.type and (target.index is None or actual.index in (None, target.index))


def tensors_of(obj):
    """(name, tensor) of every tensor `obj` holds: an nn.Module's parameters (and their gradients), buffers and
    tensor attributes (also inside lists, tuples and dicts) of every submodule; an optimizer's state."""
    found = []

    def visit(value, name, depth=0):
        if isinstance(value, torch.Tensor):
            found.append((name, value))
            if value.grad is not None:
                found.append((name + ".grad", value.grad))
        elif isinstance(value, dict) and depth < 3:
            for k, v in value.items():
                visit(v, f"{name}[{k}]", depth + 1)
        elif isinstance(value, (list, tuple)) and depth < 3:
            for i, v in enumerate(value):
                visit(v, f"{name}[{i}]", depth + 1)

    if isinstance(obj, torch.optim.Optimizer):
        names = {id(p): f"param{i}" for i, p in enumerate(p for g in obj.param_groups for p in g["params"])}
        for p, state in obj.state.items():
            for k, v in state.items():
                if k == "step" and isinstance(v, torch.Tensor) and v.dim() == 0 and v.device.type == "cpu":
                    continue  # torch keeps Adam's step counter on the CPU unless capturable/fused: by design
                visit(v, f"{names.get(id(p), '?')}.{k}")
        return found
    for mod_name, module in obj.named_modules():
        base = f"{mod_name}." if mod_name else ""
        for key, value in vars(module).items():
            if key == "_modules":
                continue
            if key in ("_parameters", "_buffers"):
                for k, v in value.items():
                    if v is not None:
                        visit(v, base + k)
            else:
                visit(value, base + key)
    return found


def misplaced(device, **objects):
    """Names of the tensors (of modules / optimizers) that are not on `device`."""
    target = torch.device(device)
    return [f"{label}:{name} on {t.device}" for label, obj in objects.items() if obj is not None
            for name, t in tensors_of(obj) if not same_device(t.device, target)]


def autocast(precision, device):
    if precision == "amp_bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --- the pieces, as step_time.py builds them (the plugin's parser, open_clip's AdamW) ----------------------
def make_args(loss, precision, device, ref_precision="fp32", lr=1e-5):
    from open_clip_dive.losses import loss_uses_reference

    ref = B_REF if loss_uses_reference(loss) else None
    # meta is no open_clip device: parse for the CPU, then point the run at meta
    args = step_time.make_args(TINY_MODEL, B, precision, "cpu" if device == "meta" else device, loss, ref,
                               ref_precision, lr=lr)
    args.device = device if device == "meta" else args.device
    return args


def default_losses():
    """The registry losses this check feeds: all but the classification-head family (ce, lp-ft, lipsum, car-ft,
    the losses reading --dive-head-init), whose class labels and zero-shot head it does not build yet."""
    from open_clip_dive.losses import list_losses, loss_flags

    return [n for n in list_losses() if "dive_head_init" not in (loss_flags(n) or ())]


def build_loss(args, factory=None):
    from open_clip_dive.losses import create_loss

    return factory(args) if factory is not None else create_loss(args)


# --- loss: terms and input gradients --------------------------------------------------------------------
def loss_input_leaves(loss, seed):
    """CPU leaves the loss's inputs are made of: raw features (normalised in the step), logit scale, frozen
    features; which keys follows what the loss declares (as TrainingStep feeds it)."""
    from open_clip_dive.losses import needs_frozen, needs_reference

    g = torch.Generator().manual_seed(seed)
    leaves = {"image_features": torch.randn(B, DIM, generator=g), "text_features": torch.randn(B, DIM, generator=g),
              "logit_scale": torch.tensor(math.log(1 / 0.07))}
    frozen = {}
    if needs_reference(loss):
        for tower in ("image", "text"):
            raw = torch.randn(B_REF, DIM, generator=g)
            leaves[f"ref_{tower}_features"] = raw
            if needs_frozen(loss):  # the pre-trained embeddings: near the trainable ones, as after some steps
                frozen[f"ref0_{tower}_features"] = F.normalize(raw + 0.3 * torch.randn(B_REF, DIM, generator=g), dim=-1)
    return leaves, frozen


def run_loss(loss, device, precision, seeds):
    """Per step: (terms, input gradients); then the loss's state. The state moves between steps as the
    training loop moves it (on_optimizer_step)."""
    steps = []
    for seed in seeds:
        cpu_leaves, frozen = loss_input_leaves(loss, seed)
        leaves = {k: v.to(device).requires_grad_() for k, v in cpu_leaves.items()}
        with autocast(precision, device):
            inputs = {k: (v.exp() if k == "logit_scale" else F.normalize(v, dim=-1)) for k, v in leaves.items()}
            inputs.update({k: v.to(device) for k, v in frozen.items()})
            terms = loss(**inputs, output_dict=True)
        sum(terms.values()).backward()
        grads = {k: v.grad for k, v in leaves.items() if v.grad is not None}  # snd uses no text features
        steps.append(({k: v.detach() for k, v in terms.items()}, grads))
        if hasattr(loss, "on_optimizer_step"):
            loss.on_optimizer_step()
    return steps, {k: v.detach() for k, v in loss.state_dict().items()}


def check_losses(device, names, rows, log):
    for name in names:
        try:
            cpu = {p: run_loss(build_loss(make_args(name, p, "cpu")), "cpu", p, (1, 2))
                   for p in ("fp32", "amp_bf16")}
        except Exception as e:  # a loss this check cannot feed (e.g. one that needs class heads): say why
            rows.append(skip("loss", name, f"cannot run on the CPU with generic inputs: {_one_line(e)}"))
            continue

        def errors(result):
            (steps, state), (ref_steps, ref_state) = result, cpu["fp32"]
            return {"terms": worst((s[0], r[0]) for s, r in zip(steps, ref_steps)),
                    "grads": worst((s[1], r[1]) for s, r in zip(steps, ref_steps)),
                    "state": rel_err(state, ref_state) if ref_state else None}

        def on_device(precision):
            loss = build_loss(make_args(name, precision, device)).to(device)
            return errors(run_loss(loss, device, precision, (1, 2))), misplaced(device, loss=loss)

        compare(rows, "loss", name, errors(cpu["amp_bf16"]), on_device, log)


def compare(rows, section, case, cpu_bf16, run_on_device, log):
    """The device's fp32 row (bound 1e-4), the CPU's own bf16 error, and the device's bf16 row against it."""
    rows.append(row(section, case, "amp_bf16", "cpu fp32", cpu_bf16, measured=True, where="cpu"))
    for precision in ("fp32", "amp_bf16"):
        try:
            errs, devices = run_on_device(precision)
        except Exception as e:
            rows.append(fail(section, case, precision, f"failed on the device: {_one_line(e)}"))
            log(traceback.format_exc())
            continue
        bound = FP32_TOL if precision == "fp32" else {
            k: max(BF16_FACTOR * v, BF16_FLOOR) for k, v in cpu_bf16.items() if v is not None}
        rows.append(row(section, case, precision, "cpu fp32", errs, bound, devices))


# --- ema -----------------------------------------------------------------------------------------------
def check_ema(device, rows):
    from open_clip_dive.losses import DifferenceVectorEMA

    def run(ema, dev, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(3):  # three optimizer steps of two micro-batches each
            for _ in range(2):
                u, v = (torch.randn(B_REF, DIM, generator=g).to(dev) for _ in range(2))
                ema.current(u)
                ema.observe(u, v)
            ema.update()
        return ema

    cpu = run(DifferenceVectorEMA(0, 0.9), "cpu", 0)
    dev = run(DifferenceVectorEMA(0, 0.9).to(device), device, 0)
    rows.append(row("ema", "update x3", "fp32", "cpu fp32", {"state": rel_err(dev.state_dict(), cpu.state_dict())},
                    devices=misplaced(device, ema=dev)))
    saved = {k: v.cpu() for k, v in dev.state_dict().items()}  # a checkpoint, loaded with map_location=cpu
    for case, before in (("resume: load, then .to", False), ("resume: .to, then load", True)):
        ema = DifferenceVectorEMA(0, 0.9)
        if before:
            ema.to(device)
        ema.load_state_dict(saved)
        ema.to(device)
        loaded = rel_err(ema.state_dict(), saved)
        try:
            run(ema, device, 1)
            run(cpu, "cpu", 1)
            err = max(loaded, rel_err(ema.state_dict(), cpu.state_dict()))
            rows.append(row("ema", case, "fp32", "cpu fp32", {"state": err}, devices=misplaced(device, ema=ema)))
        except Exception as e:
            rows.append(fail("ema", case, "fp32", _one_line(e)))
        cpu = run(DifferenceVectorEMA(0, 0.9), "cpu", 0)


# --- rng: the checkpoint's RNG state restores the device's generator ----------------------------------------
def check_rng(device, work, rows):
    """What a preemption checkpoint stores (checkpoint.rng_state, through a weights_only save) makes the device's
    generator draw the same numbers again after resume (dropout, patch dropout)."""
    from open_clip_dive.checkpoint import rng_state, set_rng_state

    torch.rand(1, device=device)  # the device's generator exists, as after a training step
    path = os.path.join(work, "rng.pt")
    torch.save(rng_state(), path)
    first = torch.rand(1000, device=device)
    set_rng_state(torch.load(path, weights_only=True))
    again = torch.rand(1000, device=device)
    kind = torch.device(device).type
    saved = "cuda" in torch.load(path, weights_only=True) if kind == "cuda" else True
    rows.append(row("rng", f"checkpoint RNG state -> {kind} generator", "-", "same draws",
                    {"state": rel_err(again, first)}, devices=[] if saved else ["no CUDA generator in the checkpoint"]))


# --- step: TrainingStep of the tiny model ------------------------------------------------------------------
def tiny_models(seed):
    """(pre-trained, trainable) tiny models on the CPU: the trainable one moved off the pre-trained weights,
    so the difference vectors are not zero (as after some fine-tuning)."""
    register_tiny_model()
    torch.manual_seed(seed)
    args = make_args("flyp", "fp32", "cpu")
    pretrained = step_time.create_model(args)
    trainable = copy.deepcopy(pretrained)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in trainable.parameters():
            if p.dim() >= 2:
                p.add_(0.05 * p.std() * torch.randn(p.shape, generator=g))
    return pretrained, trainable


def run_steps(name, device, precision, models, steps=2, factory=None):
    """`steps` TrainingSteps on `device`; returns per step (terms, grads), the parameter updates, the loss state,
    and the live objects (for the placement check)."""
    import open_clip

    from open_clip_dive.losses import needs_frozen, needs_reference
    from open_clip_dive.reference import frozen_copy
    from open_clip_dive.train import TrainingStep

    ref_precision = "bf16" if precision == "amp_bf16" else "fp32"
    args = make_args(name, precision, device, ref_precision)
    pretrained, trainable = models
    loss = build_loss(args, factory)
    model = copy.deepcopy(trainable).to(device)
    frozen = frozen_copy(copy.deepcopy(pretrained).to(device), ref_precision) if needs_frozen(loss) else None
    loss.to(device)
    if device == "meta":  # open_clip's AdamW reads its step counter with .item(), which meta tensors cannot do
        optimizer, scaler = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9), None
    else:
        optimizer, scaler = step_time.create_optimizer(model, args)
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    batch = step_time.make_batch(args, tokenizer, B, 0)
    ref = step_time.make_batch(args, tokenizer, B_REF, 1, captions=True) if needs_reference(loss) else None
    run_frozen = frozen
    if device == "meta" and frozen is not None:
        # torch.autocast has no meta backend, so the frozen forward cannot run there: the step gets the frozen
        # embeddings as --dive-ref-cache hands them over (CPU tensors in the batch), the frozen copy is only walked
        g = torch.Generator().manual_seed(2)
        ref = dict(ref, **{f"ref0_{t}_features": F.normalize(torch.randn(B_REF, DIM, generator=g), dim=-1)
                           for t in ("image", "text")})
        run_frozen = None
    before = {k: v.detach().cpu().clone() for k, v in model.named_parameters()} if device != "meta" else {}
    model.train()
    loss.train()
    step_fn = TrainingStep(model, loss, args, frozen=run_frozen)
    out = []
    for _ in range(steps):
        terms, _ = step_fn([(batch, ref)], optimizer, scaler)
        terms.pop("loss", None)
        out.append(({k: v.detach() for k, v in terms.items()},
                    {k: v.grad.detach().clone() for k, v in model.named_parameters() if v.grad is not None}))
    updates = {k: v.detach().cpu() - before[k] for k, v in model.named_parameters()} if device != "meta" else {}
    live = {"model": model, "optimizer": optimizer, "loss": loss, "frozen": frozen}
    return out, updates, {k: v.detach() for k, v in loss.state_dict().items()}, live


def check_steps(device, names, rows, log, models):
    for name in names:
        try:
            cpu = {p: run_steps(name, "cpu", p, models) for p in ("fp32", "amp_bf16")}
        except Exception as e:
            rows.append(skip("step", name, f"cannot run on the CPU: {_one_line(e)}"))
            continue

        def errors(result):
            (steps, updates, state, _), (ref_steps, ref_updates, ref_state, _) = result, cpu["fp32"]
            return {"terms": worst((s[0], r[0]) for s, r in zip(steps, ref_steps)),
                    "grads": worst((s[1], r[1]) for s, r in zip(steps, ref_steps)),
                    "updates": rel_err(updates, ref_updates), "state": rel_err(state, ref_state) if ref_state else None}

        def on_device(precision):
            result = run_steps(name, device, precision, models)
            return errors(result), misplaced(device, **result[3])

        compare(rows, "step", name, errors(cpu["amp_bf16"]), on_device, log)


def placement_problems(device, name, models, factory=None):
    """Tensors not on `device` after two TrainingSteps of `--loss name` there (fp32), or the error that a mixed
    placement raised. On `meta`, a CPU tensor mixed into an operation fails as it does on CUDA."""
    try:
        *_, live = run_steps(name, device, "fp32", models, factory=factory)
    except Exception as e:
        return [f"step failed: {_one_line(e)}"]
    return misplaced(device, **live)


def check_placement(devices, names, rows, models):
    for device in devices:
        for name in names:
            problems = placement_problems(device, name, models)
            mixed = any(m in p for p in problems for m in ("expected device", "Expected all tensors"))
            if device == "meta" and problems[:1] and problems[0].startswith("step failed") and not mixed:
                rows.append(skip("placement", name, f"not runnable on meta: {problems[0]}", "fp32"))
                continue
            rows.append(row("placement", name, "fp32", "-", devices=problems, where=device))


# --- train: python -m open_clip_dive.main ------------------------------------------------------------------
def write_tiny_data(root, steps_per_epoch, batch, ref_batch):
    """A tiny model config, class-labelled ID shards (images whose colour depends on the class) and caption
    reference shards, by the project's shard tool."""
    import numpy as np

    from open_clip_dive.tools.make_shards import write_array_shards

    os.makedirs(root, exist_ok=True)
    config = os.path.join(root, f"{TINY_MODEL}.json")
    with open(config, "w") as f:
        json.dump(TINY_MODEL_CFG, f)
    rng = np.random.default_rng(0)
    classes = ["red", "green", "blue", "yellow"]

    def images(labels):
        base = np.zeros((len(labels), 32, 32, 3), np.float32)
        for i, label in enumerate(labels):
            base[i, ..., label % 3] = 120 + 40 * (label // 3)
        return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)

    n = steps_per_epoch * batch
    labels = rng.integers(len(classes), size=n)
    id_set = write_array_shards(images(labels), labels, classes, os.path.join(root, "id"), prefix="id",
                                shard_size=math.ceil(n / 2), overwrite=True, progress=False)
    n_ref = max(4 * ref_batch, 16)
    ref_labels = rng.integers(len(classes), size=n_ref)
    captions = [f"a picture of something {classes[c]} number {j}" for j, c in enumerate(ref_labels)]
    ref_set = write_array_shards(images(ref_labels), None, None, os.path.join(root, "ref"), captions=captions,
                                 prefix="ref", shard_size=math.ceil(n_ref / 2), overwrite=True, progress=False)
    return {"config": config, "id": id_set.pattern, "ref": ref_set.pattern,
            "classnames": os.path.join(root, "id", "classnames.json")}


def train_argv(data, logs, name, device, epochs, batch, ref_batch, *extra):
    return [sys.executable, "-m", "open_clip_dive.main", "--dive-model-config", data["config"], "--model", TINY_MODEL,
            "--train-data", data["id"], "--classnames", data["classnames"], "--batch-size", str(batch),
            "--epochs", str(epochs), "--device", device, "--precision", "amp_bf16", "--dive-ref-precision", "bf16",
            "--workers", "1", "--lr", "1e-3", "--warmup", "2", "--logs", logs, "--name", name, "--report-to", "none",
            "--log-every-n-steps", "1", "--seed", "0", "--save-frequency", "1", "--loss", "dive",
            "--dive-ref-data", data["ref"], "--dive-ref-batch-size", str(ref_batch), "--dive-avl-weight", "10",
            "--dive-pvl-weight", "10", *extra]


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _step_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line for line in f if "Train Epoch:" in line]


def _run(cmd, timeout):
    start = time.time()
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    return result, time.time() - start


def check_train(device, work, rows, log, quick):
    epochs, steps_per_epoch = 3, (2 if quick else 10)
    batch, ref_batch = (4, 2) if quick else (16, 8)
    total = epochs * steps_per_epoch
    data = write_tiny_data(os.path.join(work, "data"), steps_per_epoch, batch, ref_batch)
    logs = os.path.join(work, "logs")
    case = f"{total} steps amp_bf16"

    # 1. cut by SIGUSR1 after 3 logged steps: early, so even fast GPU steps cannot finish the run first
    out_log = os.path.join(logs, "cut", "out.log")
    start = time.time()
    proc = subprocess.Popen(train_argv(data, logs, "cut", device, epochs, batch, ref_batch), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    signalled = False
    while time.time() - start < 300 and proc.poll() is None:
        if len(_step_lines(out_log)) >= 3:
            proc.send_signal(signal.SIGUSR1)
            signalled = True
            break
        time.sleep(0.005)
    try:
        rc = proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "timeout"
    stderr = proc.stderr.read()
    checkpoints = os.path.join(logs, "cut", "checkpoints")
    saved = sorted(os.listdir(checkpoints)) if os.path.isdir(checkpoints) else []
    mid = [n for n in saved if "_step_" in n]
    ok = signalled and rc == 75 and len(mid) == 1
    detail = f"signalled={signalled} exit={rc} checkpoints={saved} ({time.time() - start:.0f} s)"
    rows.append(verdict("train", f"SIGUSR1 -> exit 75, {case}", "amp_bf16", ok, detail))
    if not ok:
        log(stderr[-3000:])
        return
    cut_steps = len(_step_lines(out_log))
    epoch, step = (int(x) for x in mid[0][len("epoch_"):-len(".pt")].split("_step_"))

    # 2. --resume latest: the remaining steps, to the end, with a checkpoint per epoch
    resumed, seconds = _run(train_argv(data, logs, "cut", device, epochs, batch, ref_batch, "--resume", "latest"),
                            600)
    resumed_steps = len(_step_lines(out_log)) - cut_steps
    final = os.path.join(checkpoints, f"epoch_{epochs}.pt")
    epochs_saved = all(os.path.exists(os.path.join(checkpoints, f"epoch_{e}.pt")) for e in range(1, epochs + 1))
    ok = (resumed.returncode == 0 and epochs_saved and cut_steps == epoch * steps_per_epoch + step
          and resumed_steps == total - cut_steps)
    detail = (f"exit={resumed.returncode}; cut after {cut_steps} steps ({mid[0]}), resumed ran {resumed_steps}, "
              f"total {cut_steps + resumed_steps} of {total} ({seconds:.0f} s)")
    if ok:
        ckpt = torch.load(final, map_location="cpu", weights_only=True)
        finite = all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
        ema = ckpt["dive"].get("ema")
        ok = finite and ema is not None and bool(torch.isfinite(ema).all()) and float(ema.norm()) > 0
        detail += f"; final weights finite={finite}, |m|={float(ema.norm()) if ema is not None else None:.3g}"
    rows.append(verdict("train", f"--resume latest, {case}", "amp_bf16", ok, detail))
    if not ok:
        log(resumed.stderr[-3000:])
        return
    if quick:
        return

    # 3. the same run uninterrupted (CPU: bit-identical; CUDA: the error measured, kernels are not deterministic)
    full, seconds = _run(train_argv(data, logs, "full", device, epochs, batch, ref_batch), 600)
    if full.returncode != 0:
        rows.append(verdict("train", f"uninterrupted, {case}", "amp_bf16", False, f"exit={full.returncode}"))
        log(full.stderr[-3000:])
        return
    a = torch.load(os.path.join(logs, "full", "checkpoints", f"epoch_{epochs}.pt"), map_location="cpu",
                   weights_only=True)
    b = torch.load(final, map_location="cpu", weights_only=True)
    rows.append(row("train", f"resumed vs uninterrupted, {case}", "amp_bf16", "not cut",
                    {"state": rel_err(b["state_dict"], a["state_dict"])}, measured=device != "cpu",
                    note=f"weights; the EMA vector: {rel_err(b['dive']['ema'], a['dive']['ema']):.2e} ({seconds:.0f} s;"
                         " CUDA kernels are not bit-deterministic, so on CUDA the error is measured, not bounded)"))


# --- cache: tools.cache_reference ----------------------------------------------------------------------
def check_cache(device, work, rows, models):
    from open_clip_dive.tools import cache_reference

    data = write_tiny_data(os.path.join(work, "cache_data"), 2, 8, 8)
    weights = os.path.join(work, "tiny_weights.pt")
    torch.save(models[0].state_dict(), weights)
    outputs = {}
    runs = (("cpu", "cpu", "fp32"), ("cpu bf16", "cpu", "bf16"), ("dev", device, "fp32"), ("dev bf16", device, "bf16"))
    for label, dev, precision in runs:
        out = os.path.join(work, f"cache_{label.replace(' ', '_')}")
        rc = cache_reference.main(["--model", TINY_MODEL, "--pretrained", weights, "--dive-model-config",
                                   data["config"], "--dive-ref-data", data["ref"], "--output", out, "--device", dev,
                                   "--batch-size", "8", "--precision", precision])
        if rc != 0:
            rows.append(fail("cache", f"cache_reference --device {dev} --precision {precision}", precision,
                             f"exit {rc}"))
            return
        outputs[label] = out

    def load(out):
        files = sorted(f for f in os.listdir(out) if f.endswith(".emb.pt"))
        embs = [torch.load(os.path.join(out, f), weights_only=True) for f in files]
        with open(os.path.join(out, "meta.json")) as f:
            return files, embs, json.load(f)

    ref_files, ref_embs, ref_meta = load(outputs["cpu"])

    def errors(label):
        files, embs, meta = load(outputs[label])
        same = files == ref_files and all(a["keys"] == b["keys"] for a, b in zip(embs, ref_embs))
        same = same and meta["fingerprint"] == ref_meta["fingerprint"]
        err = rel_err([torch.cat([e["image"], e["text"]]) for e in embs],
                      [torch.cat([e["image"], e["text"]]) for e in ref_embs]) if same else math.inf
        return {"state": err}, [] if same else ["keys or fingerprint differ from the CPU's"]

    case = f"embeddings of {sum(len(e['keys']) for e in ref_embs)} pairs, keys, fingerprint"
    cpu_bf16 = errors("cpu bf16")[0]
    compare(rows, "cache", case, cpu_bf16, lambda p: errors("dev" if p == "fp32" else "dev bf16"), lambda _: None)


# --- rows ------------------------------------------------------------------------------------------------
def _one_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def _fmt(x):
    return "-" if x is None else f"{x:.2e}"


def row(section, case, precision, vs, errors=None, bound=FP32_TOL, devices=(), note="", measured=False,
        where=None):
    """One comparison: PASS when every error is within its bound (one number, or one per error) and no tensor is
    off the device; MEASURED rows are shown, not bounded (a non-finite value still fails)."""
    errors = {k: (errors or {}).get(k) for k in ERRORS}
    bounds = bound if isinstance(bound, dict) else dict.fromkeys(ERRORS, bound)
    finite = all(math.isfinite(v) for v in errors.values() if v is not None)
    within = all(v <= bounds.get(k, FP32_TOL) for k, v in errors.items() if v is not None)
    good = finite and not devices and (measured or within)
    shown = [bounds[k] for k, v in errors.items() if v is not None and k in bounds]
    return {"section": section, "case": case, "precision": precision + (f" ({where})" if where else ""), "vs": vs,
            **{k: _fmt(v) for k, v in errors.items()},
            "bound": "-" if measured or not shown else (f"{shown[0]:g}" if len(set(shown)) == 1
                                                        else f"{BF16_FACTOR:g}x cpu bf16"),
            "devices": "ok" if not devices else f"{len(devices)} off: " + "; ".join(devices[:3]),
            "result": "FAIL" if not good else ("MEASURED" if measured else "PASS"), "note": note,
            "errors": errors, "misplaced": list(devices)}


def verdict(section, case, precision, ok, detail):
    return {**row(section, case, precision, "-"), "devices": "-", "result": "PASS" if ok else "FAIL", "note": detail}


def fail(section, case, precision, why):
    return {**row(section, case, precision, "-"), "devices": "-", "result": "FAIL", "note": why}


def skip(section, case, why, precision="-"):
    return {**row(section, case, precision, "-"), "devices": "-", "result": "SKIP", "note": why}


def table(rows) -> str:
    lines = [[r[h] for h in HEADERS] for r in rows]
    text = markdown_table(HEADERS, lines)
    notes = [f"- {r['section']} / {r['case']} ({r['precision']}): {r['result']}: {r['note']}" for r in rows
             if r["note"]]
    return text + ("\n\n" + "\n".join(notes) if notes else "")


def bf16_summary(rows):
    """The tolerance bf16 autocast meets on the device, per section: its largest error against fp32 on the CPU."""
    out = []
    for section in ("loss", "step", "cache"):
        found = [r for r in rows if r["section"] == section and r["precision"] == "amp_bf16"]
        errs = {k: max((r["errors"][k] for r in found if r["errors"][k] is not None), default=None) for k in ERRORS}
        if any(v is not None for v in errs.values()):
            out.append(f"bf16 autocast on the device, {section}: within " + ", ".join(
                f"{v:.1e} ({k})" for k, v in errs.items() if v is not None) + " of fp32 on the CPU")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=os.environ.get("DEVICE", "cuda"), help="Device to check against the CPU "
                   "(default: $DEVICE, else cuda). cpu: a dry run of every check on the CPU.")
    p.add_argument("--out", default=os.environ.get("OUT"), help="Write gpu_check.md and gpu_check.json here "
                   "(default: $OUT; none: only print).")
    p.add_argument("--sections", default="loss,ema,rng,step,placement,train,cache", help="Comma list of sections.")
    p.add_argument("--losses", default=None, help="Comma list of registry losses (default: every registry loss but the classification-head family, see default_losses()).")
    p.add_argument("--quick", action="store_true", help="A dry run's sizes: a 6-step train run without its "
                   "uninterrupted twin; step and placement sections for flyp and dive only.")
    p.add_argument("--work-dir", default=None, help="Where the tiny data and runs go (default: a temporary folder).")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if torch.device(a.device).type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: error: --device {a.device}: CUDA is not available here (DEVICE=cpu for a dry run)",
              file=sys.stderr)
        return 2
    # the 1e-4 comparisons need true fp32 on the GPU: no TF32 in matmuls or cuDNN convolutions (the patch embedding)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    register_tiny_model()
    names = a.losses.split(",") if a.losses else default_losses()
    step_names = [n for n in names if n in ("flyp", "dive")] if a.quick else names
    sections = a.sections.split(",")
    started = time.time()
    rows, logs = [], []
    log = logs.append
    tmp = None if a.work_dir else tempfile.TemporaryDirectory(prefix="dive-gpu-check-")
    work = a.work_dir or tmp.name
    models = tiny_models(0)
    timings = []
    checks = {
        "loss": lambda: check_losses(a.device, names, rows, log),
        "ema": lambda: check_ema(a.device, rows),
        "rng": lambda: check_rng(a.device, work, rows),
        "step": lambda: check_steps(a.device, step_names, rows, log, models),
        "placement": lambda: check_placement(sorted({a.device, "meta"}, key=lambda d: d == "meta"), step_names,
                                             rows, models),
        "train": lambda: check_train(a.device, work, rows, log, a.quick),
        "cache": lambda: check_cache(a.device, work, rows, models),
    }
    versions = f"torch {torch.__version__}" + (f", CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}"
                                               if torch.device(a.device).type == "cuda" else "")

    def report(done):
        counts = {k: sum(r["result"] == k for r in rows) for k in ("PASS", "MEASURED", "SKIP", "FAIL")}
        text = "\n".join([
            f"CUDA correctness (benchmarks/gpu_check.py): --device {a.device} against the CPU; {versions}; "
            f"fp32 with TF32 off, bound {FP32_TOL:g}; bf16 autocast against the CPU's fp32, bound {BF16_FACTOR:g}x "
            f"the CPU's own bf16 error (the `amp_bf16 (cpu)` rows, at least {BF16_FLOOR:g}). Relative errors "
            "||a - b|| / ||b||; terms and gradients: the worst of two steps.", "",
            table(rows), "", *bf16_summary(rows), "",
            f"Result: {counts['FAIL']} FAIL, {counts['PASS']} PASS, {counts['MEASURED']} MEASURED, {counts['SKIP']} "
            f"SKIP ({', '.join(timings)}; {time.time() - started:.0f} s)"
            + ("" if done else f"; not run (yet): {', '.join(sections[len(timings):])}")])
        if a.out:  # after every section: a run stopped at its time limit keeps what finished
            os.makedirs(a.out, exist_ok=True)
            with open(os.path.join(a.out, "gpu_check.md"), "w") as f:
                f.write(text + "\n")
            with open(os.path.join(a.out, "gpu_check.json"), "w") as f:
                json.dump({"device": a.device, "versions": versions, "rows": rows, "logs": logs[-20:]}, f,
                          indent=1, default=str)
        return text, counts

    for section in sections:
        t0 = time.time()
        try:
            checks[section]()
        except Exception as e:  # a broken section is a FAIL row, the others still run
            rows.append(fail(section, "(section)", "-", _one_line(e)))
            log(traceback.format_exc())
        timings.append(f"{section} {time.time() - t0:.0f} s")
        print(f"[gpu_check] {section} done ({timings[-1]})", file=sys.stderr, flush=True)
        report(False)
    if tmp is not None:
        tmp.cleanup()
    text, counts = report(True)
    print(text, flush=True)
    if logs:
        print("\n--- logs of failed checks ---\n" + "\n".join(logs)[-6000:], file=sys.stderr)
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
