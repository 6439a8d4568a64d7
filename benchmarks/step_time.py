"""FLYP and DiVE training steps side by side: step time against the floor, and peak memory.

Times the project's real training step, `open_clip_dive.train.TrainingStep` (what train_one_epoch calls once
per optimizer step, after the schedule), with the plugin's real `frozen_copy` (FrozenReference), registry
losses (`flyp`, `dive`), open_clip's AdamW parameter groups, GradScaler rule and cosine schedule. Batches are
in memory on the device (the same batch every step), so data loading is not measured. FLYP, DiVE and
DiVE-with-cache turns alternate in one process on one model, in a shuffled order each round, after an
untimed warm-up round. Reported:

  opt share     the optimizer step alone over the FLYP step: a per-step cost that does not grow with B + B'
  DiVE/FLYP     median over rounds of (median DiVE step / median FLYP step in that round); range: min-max
  c             forward-only fraction: frozen forward on B' samples per sample, over a FLYP step per sample
  floors        (B + B')/B (all samples at FLYP's per-sample cost), and (B + B' + c*B')/B (plus the frozen pass)
  cache         DiVE with the frozen forward replaced by precomputed embeddings (what --dive-ref-cache does)
  frozen share  frozen forward time / DiVE step time
  memory        peak per configuration in a fresh process: CUDA max allocated (whole process), or on CPU the
                peak RSS growth after the trainable model is built (includes frozen copy, optimizer state,
                gradients and activations)

Examples (the README's CPU tables; on a shared CPU use one thread and the CPU clock):
    OMP_NUM_THREADS=1 python benchmarks/step_time.py --models tiny --batch-sizes tiny=128 \\
        --precisions fp32,amp_bf16 --rounds 5 --steps-per-turn 2 --clock cpu
    OMP_NUM_THREADS=1 python benchmarks/step_time.py --models ViT-B-16 --batch-sizes ViT-B-16=8 \\
        --image-sizes ViT-B-16=64 --rounds 1 --steps-per-turn 1 --memory-precisions fp32 --clock cpu
GPU: benchmarks/gpu.sh.
"""

import argparse
import gc
import json
import multiprocessing as mp
import os
import random
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (TINY_MODEL, current_rss, fmt, machine_description, markdown_table, median,  # noqa: E402
                     peak_rss, register_tiny_model, relative_iqr)

import torch  # noqa: E402

PRECISIONS = ("fp32", "amp_bf16", "amp")
MODEL_ALIASES = {"tiny": TINY_MODEL}
TIME_HEADERS = ["model", "precision", "frozen", "B", "B'", "FLYP ms", "opt share", "DiVE ms",
                "DiVE/FLYP (per-round range)",
                "c", "(B+B')/B", "(B+B'+cB')/B", "DiVE/floor", "cache/FLYP", "cache/(B+B')/B", "frozen share",
                "mem DiVE/FLYP"]
MEM_HEADERS = ["model", "precision", "config", "B", "B'", "grad ckpt", "frozen", "peak MiB", "vs FLYP",
               "vs FLYP same ckpt"]


# --- building the pieces exactly as open_clip_train.main + the plugin do -----------------------------------
def make_args(model, batch_size, precision, device, loss, ref_batch=None, ref_precision="fp32",
              image_size=None, grad_checkpointing=False, lr=1e-5):
    """An argparse namespace from the plugin's real parser (plugin flags + open_clip's), on one process."""
    from open_clip_train.distributed import init_distributed_device
    from open_clip_train.params import parse_args as upstream_parse_args

    from open_clip_dive.params import parse_args

    argv = ["--model", model, "--batch-size", str(batch_size), "--precision", precision, "--device", device,
            "--lr", str(lr), "--warmup", "1", "--log-every-n-steps", str(10**9), "--report-to", "",
            "--loss", loss, "--dive-preempt-signals", "none"]
    if ref_batch:
        argv += ["--dive-ref-data", "in-memory", "--dive-ref-batch-size", str(ref_batch),
                 "--dive-ref-precision", ref_precision]
    if image_size:
        argv += ["--force-image-size", str(image_size)]
    if grad_checkpointing:
        argv += ["--grad-checkpointing"]
    args = parse_args(argv, upstream_parse_args)
    init_distributed_device(args)  # world size 1, rank 0, device (falls back to CPU as main() would)
    # what open_clip_train.main.main() derives from the flags before training
    args.wandb = "wandb" in args.report_to or "all" in args.report_to
    args.tensorboard = "tensorboard" in args.report_to or "all" in args.report_to
    args.distill = args.distill_model is not None and args.distill_pretrained is not None
    if isinstance(args.force_image_size, (tuple, list)) and len(args.force_image_size) == 1:
        args.force_image_size = args.force_image_size[0]
    return args


def create_model(args):
    import open_clip

    register_tiny_model()
    model = open_clip.create_model(args.model, pretrained=None, precision=args.precision, device=args.device,
                                   force_image_size=args.force_image_size, output_dict=True)
    return model


def create_optimizer(model, args):
    """open_clip_train.main's AdamW: no weight decay on gains, biases and the logit scale; its GradScaler rule."""
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
         {"params": [p for n, p in named if not exclude(n, p) and p.requires_grad], "weight_decay": args.wd}],
        lr=args.lr, betas=(args.beta1 or 0.9, args.beta2 or 0.98), eps=args.eps or 1e-6)
    scaler = torch.amp.GradScaler(device=torch.device(args.device).type) if args.precision == "amp" else None
    return optimizer, scaler


def make_batch(args, tokenizer, n, seed, captions=False):
    g = torch.Generator().manual_seed(seed)
    size = args.force_image_size or _model_image_size(args.model)
    images = torch.randn(n, 3, size, size, generator=g)
    names = ["goldfish", "tabby cat", "fire truck", "acoustic guitar", "daisy", "espresso", "tree frog", "yurt"]
    if captions:
        texts = [f"an old photograph of a {names[i % len(names)]} next to a {names[(3 * i + 1) % len(names)]}, "
                 f"taken in the evening number {i}" for i in range(n)]
    else:
        texts = [f"a photo of a {names[i % len(names)]}." for i in range(n)]
    from open_clip.model import get_input_dtype

    dtype = get_input_dtype(args.precision)
    return {"image": images.to(device=args.device, dtype=dtype), "text": tokenizer(texts).to(args.device)}


def _model_image_size(name):
    import open_clip

    size = open_clip.get_model_config(name)["vision_cfg"]["image_size"]
    return size if isinstance(size, int) else size[0]


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    """One trainable model, its optimizer and schedule; runs steps of the plugin's real `TrainingStep`."""

    def __init__(self, args_flyp, model, optimizer, scaler, clock=time.perf_counter):
        from open_clip_train.scheduler import cosine_lr

        self.args_flyp, self.model, self.optimizer, self.scaler = args_flyp, model, optimizer, scaler
        self.clock = clock
        self.scheduler = cosine_lr(optimizer, args_flyp.lr, 1, 10**9)
        self.step_count = 0

    def run(self, args, loss, batch, steps, frozen=None, ref=None):
        """`steps` training steps as train_one_epoch makes them (schedule, then the step); their times."""
        from open_clip_dive.determinism import set_train_mode
        from open_clip_dive.losses import needs_frozen
        from open_clip_dive.train import TrainingStep

        # the modes train_one_epoch uses by default: frozen-model losses run with stochastic layers off
        frozen_model_loss = needs_frozen(loss)
        set_train_mode(self.model, bn_eval=frozen_model_loss, deterministic=frozen_model_loss)
        loss.train()
        step_fn = TrainingStep(self.model, loss, args, frozen=frozen)
        times = []
        for _ in range(steps):
            synchronize(args.device)
            start = self.clock()
            self.scheduler(self.step_count)
            step_fn([(batch, ref)], self.optimizer, self.scaler)
            synchronize(args.device)
            times.append(self.clock() - start)
            self.step_count += 1
        return times

    def optimizer_step_times(self, steps):
        """The optimizer step alone (the per-step cost that does not grow with the batch), as the step does it."""
        from open_clip_dive.train import TrainingStep

        step_fn = TrainingStep(self.model, None, self.args_flyp)
        times = []
        for _ in range(steps):
            synchronize(self.args_flyp.device)
            start = self.clock()
            step_fn.optimizer_step(self.optimizer, self.scaler)
            synchronize(self.args_flyp.device)
            times.append(self.clock() - start)
        return times


def frozen_forward_times(frozen, args, ref_batch, steps, clock=time.perf_counter):
    """The frozen model's forward on the reference batch, as train_one_epoch calls it (inside autocast)."""
    from open_clip_train.precision import get_autocast

    autocast = get_autocast(args.precision, device_type=torch.device(args.device).type)
    times = []
    for _ in range(steps):
        synchronize(args.device)
        start = clock()
        with autocast():
            frozen(ref_batch["image"], ref_batch["text"])
        synchronize(args.device)
        times.append(clock() - start)
    return times


def ref_batch_sizes(batch_size, fractions):
    return [max(1, int(round(batch_size * f))) for f in fractions]


def resolve_ref_precision(spec, precision, device):
    if spec != "auto":
        return spec
    return "bf16" if precision == "amp_bf16" else "fp32"


# --- timing ----------------------------------------------------------------------------------------
def time_configuration(model_name, precision, batch_size, image_size, fractions, ref_precision, device, rounds,
                       steps, seed, log, clock=time.perf_counter):
    """All turns for one (model, precision): FLYP, and for each B' DiVE, DiVE with cache, and frozen forward."""
    import open_clip

    from open_clip_dive.losses import create_loss
    from open_clip_dive.reference import frozen_copy

    torch.manual_seed(seed)
    ref_sizes = ref_batch_sizes(batch_size, fractions)
    args_flyp = make_args(model_name, batch_size, precision, device, "flyp", image_size=image_size)
    args_dive = {b: make_args(model_name, batch_size, precision, device, "dive", b, ref_precision, image_size)
                 for b in ref_sizes}
    model = create_model(args_flyp)
    frozen = frozen_copy(model, ref_precision)  # taken from the fresh model, as the plugin does
    tokenizer = open_clip.get_tokenizer(model_name)
    optimizer, scaler = create_optimizer(model, args_flyp)
    trainer = Trainer(args_flyp, model, optimizer, scaler, clock)
    device = args_flyp.device
    batch = make_batch(args_flyp, tokenizer, batch_size, seed)
    ref_batches = {b: make_batch(args_flyp, tokenizer, b, seed + 1 + b, captions=True) for b in ref_sizes}
    loss_flyp = create_loss(args_flyp).to(device)
    loss_dive = {b: create_loss(args_dive[b]).to(device) for b in ref_sizes}
    from open_clip_train.precision import get_autocast

    with get_autocast(precision, device_type=torch.device(device).type)():
        # what --dive-ref-cache hands the step: the frozen model's embeddings as float32, with the batch
        cached = {}
        for b in ref_sizes:
            image_features, text_features = frozen(ref_batches[b]["image"], ref_batches[b]["text"])
            cached[b] = dict(ref_batches[b], ref0_image_features=image_features.float(),
                             ref0_text_features=text_features.float())
            del image_features, text_features

    turns = [("flyp", None), ("optimizer", None)]
    turns += [(kind, b) for b in ref_sizes for kind in ("dive", "cache", "frozen")]

    def do_turn(kind, b, n):
        if kind == "flyp":
            return trainer.run(args_flyp, loss_flyp, batch, n)
        if kind == "optimizer":  # the gradients of the last training step are still there
            return trainer.optimizer_step_times(n)
        if kind == "frozen":
            return frozen_forward_times(frozen, args_dive[b], ref_batches[b], n, clock)
        if kind == "dive":
            return trainer.run(args_dive[b], loss_dive[b], batch, n, frozen, ref_batches[b])
        return trainer.run(args_dive[b], loss_dive[b], batch, n, None, cached[b])

    oom = set()  # B' values that ran out of device memory: reported as OOM, their turns skipped

    def guarded_turn(kind, b, n):
        if b in oom:
            return None
        try:
            return do_turn(kind, b, n)
        except torch.OutOfMemoryError:
            if b is None:
                raise  # FLYP itself does not fit: the caller skips the configuration
            log(f"  OOM at B'={b}: skipping its turns")
            oom.add(b)
            trainer.optimizer.zero_grad()
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
            return None

    for kind, b in turns:  # warm-up round, untimed
        guarded_turn(kind, b, 1)
    times = {t: [] for t in turns}
    per_round = []
    order = list(turns)
    for r in range(rounds):
        random.Random(seed + r).shuffle(order)
        this_round = {}
        for kind, b in order:
            result = guarded_turn(kind, b, steps)
            if result is not None:
                this_round[(kind, b)] = result
                times[(kind, b)] += result
        per_round.append({t: median(v) for t, v in this_round.items()})
        log(f"  {model_name} {precision}: round {r + 1}/{rounds} done "
            f"(FLYP {1000 * per_round[-1][('flyp', None)]:.1f} ms)")
    finite = all(torch.isfinite(p).all() for p in model.parameters())

    t_flyp = median(times[("flyp", None)])
    t_opt = median(times[("optimizer", None)])
    rows = []
    for b in ref_sizes:
        if b in oom:
            rows.append({"model": model_name, "precision": precision, "frozen": ref_precision, "B": batch_size,
                         "B'": b, "flyp_s": t_flyp, "optimizer_share": t_opt / t_flyp, "oom": True})
            continue
        t_dive, t_cache, t_frozen = (median(times[(k, b)]) for k in ("dive", "cache", "frozen"))
        full = [pr for pr in per_round if ("dive", b) in pr and ("cache", b) in pr]
        round_ratios = [pr[("dive", b)] / pr[("flyp", None)] for pr in full]
        dive_ratio = median(round_ratios)  # FLYP and DiVE of the same round ran close together: drift cancels
        cache_ratio = median([pr[("cache", b)] / pr[("flyp", None)] for pr in full])
        floor_a = (batch_size + b) / batch_size
        frozen_term = t_frozen / t_flyp
        c = frozen_term * batch_size / b
        rows.append({
            "model": model_name, "precision": precision, "frozen": ref_precision, "B": batch_size, "B'": b,
            "flyp_s": t_flyp, "optimizer_share": t_opt / t_flyp, "dive_s": t_dive, "cache_s": t_cache,
            "frozen_s": t_frozen,
            "dive_ratio": dive_ratio, "dive_ratio_min": min(round_ratios), "dive_ratio_max": max(round_ratios),
            "c": c, "floor": floor_a, "floor_c": floor_a + frozen_term,
            "dive_vs_floor_c": dive_ratio / (floor_a + frozen_term),
            "cache_ratio": cache_ratio, "cache_vs_floor": cache_ratio / floor_a,
            "frozen_share": t_frozen / t_dive,
            "id_samples_per_s": batch_size / t_dive, "ref_samples_per_s": b / t_dive,
        })
    noise = {"flyp_rel_iqr": relative_iqr(times[("flyp", None)]), "steps_per_config": len(times[("flyp", None)]),
             "weights_finite": bool(finite)}
    return rows, noise


# --- memory, one fresh process per configuration -----------------------------------------------------
def memory_probe(spec):
    """Build, train `steps` steps, report peak memory. Runs in a fresh (forkserver) child process."""
    try:
        return _memory_probe(spec)
    except torch.OutOfMemoryError:
        return {"error": "OOM"}
    except Exception:  # reported in the table, not fatal to the benchmark
        return {"error": traceback.format_exc(limit=3)}


def _memory_probe(spec):
    import open_clip

    from open_clip_dive.losses import create_loss
    from open_clip_dive.reference import frozen_copy

    torch.manual_seed(spec["seed"])
    kind, b = spec["kind"], spec["ref_batch"]
    loss_name = "flyp" if kind == "flyp" else "dive"
    args = make_args(spec["model"], spec["batch_size"], spec["precision"], spec["device"], loss_name, b,
                     spec["ref_precision"], spec["image_size"], spec["grad_checkpointing"])
    cuda = torch.device(args.device).type == "cuda"
    if cuda:  # as open_clip_train.main does on CUDA
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    model = create_model(args)
    tokenizer = open_clip.get_tokenizer(args.model)
    batch = make_batch(args, tokenizer, args.batch_size, spec["seed"])
    ref_batch = make_batch(args, tokenizer, b, spec["seed"] + 1, captions=True) if b else None
    if cuda:
        synchronize(args.device)
        torch.cuda.reset_peak_memory_stats(args.device)
        baseline = torch.cuda.memory_allocated(args.device)
    else:
        baseline = current_rss()
    frozen = None
    if kind == "dive":
        frozen = frozen_copy(model, args.dive_ref_precision)
    elif kind == "cache":  # embeddings as --dive-ref-cache hands them over: [B', D] float32 per tower
        with torch.no_grad():
            out = model(ref_batch["image"][:1], ref_batch["text"][:1])
        dim = out["image_features"].shape[-1]
        feats = torch.nn.functional.normalize(torch.randn(2, b, dim, device=args.device), dim=-1)
        ref_batch = dict(ref_batch, ref0_image_features=feats[0], ref0_text_features=feats[1])
    if args.grad_checkpointing:
        model.set_grad_checkpointing()
    optimizer, scaler = create_optimizer(model, args)
    trainer = Trainer(args, model, optimizer, scaler)
    loss = create_loss(args).to(args.device)
    trainer.run(args, loss, batch, spec["steps"], frozen, ref_batch)
    synchronize(args.device)
    if cuda:
        peak = torch.cuda.max_memory_allocated(args.device)
        return {"peak": peak, "growth": peak - baseline, "measure": "CUDA max allocated, whole process"}
    peak = peak_rss()
    return {"peak": peak, "growth": peak - baseline, "measure": "peak RSS growth after model creation"}


def memory_specs(model_name, precision, batch_size, image_size, fractions, ref_precision, device, steps, seed,
                 with_checkpointing=True):
    ref_sizes = ref_batch_sizes(batch_size, fractions)
    half = ref_batch_sizes(batch_size, [0.5])[0]
    base = dict(model=model_name, precision=precision, batch_size=batch_size, image_size=image_size,
                device=device, steps=steps, seed=seed, ref_precision=ref_precision, grad_checkpointing=False)
    specs = [dict(base, kind="flyp", ref_batch=0)]
    specs += [dict(base, kind="dive", ref_batch=b) for b in ref_sizes]
    specs += [dict(base, kind="cache", ref_batch=half)]
    if with_checkpointing:
        specs += [dict(base, kind="flyp", ref_batch=0, grad_checkpointing=True),
                  dict(base, kind="dive", ref_batch=half, grad_checkpointing=True)]
    return specs


def _memory_child(conn, spec):
    conn.send(memory_probe(spec))
    conn.close()


def measure_memory(specs, log, timeout=1800):
    """Each spec in its own child process (peak RSS only grows within a process). A forkserver with torch and
    open_clip preloaded keeps the per-child start-up short; children never inherit a used OpenMP pool."""
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["torch", "open_clip", "open_clip_train.main", "open_clip_dive.plugin",
                                    "open_clip_dive.train", "psutil"])
    results = []
    for spec in specs:
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_memory_child, args=(send, spec), daemon=True)
        proc.start()
        send.close()
        try:
            result = receive.recv() if receive.poll(timeout) else {"error": f"timed out after {timeout} s"}
        except EOFError:  # the child died without an answer (e.g. the kernel's OOM killer)
            proc.join()
            result = {"error": f"child died (exit code {proc.exitcode})"}
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
        results.append(result)
        log(f"  memory {spec['model']} {spec['precision']} {spec['kind']} B'={spec['ref_batch']} "
            f"ckpt={spec['grad_checkpointing']}: "
            + (result.get("error", "").splitlines() or [f"{result['growth'] / 2**20:.0f} MiB"])[-1])
    return results


def memory_rows(specs, results, cuda):
    key = "peak" if cuda else "growth"

    def group(spec, checkpointing):  # FLYP of the same model, precision and batch size
        return spec["model"], spec["precision"], spec["batch_size"], spec["image_size"], checkpointing

    flyp = {group(spec, spec["grad_checkpointing"]): res[key] for spec, res in zip(specs, results)
            if spec["kind"] == "flyp" and "error" not in res}
    rows = []
    for spec, res in zip(specs, results):
        value = res.get(key)
        base, same = flyp.get(group(spec, False)), flyp.get(group(spec, spec["grad_checkpointing"]))
        label = {"flyp": "FLYP", "dive": "DiVE", "cache": "DiVE + cache"}[spec["kind"]]
        rows.append({
            "model": spec["model"], "precision": spec["precision"], "config": label, "B": spec["batch_size"],
            "B'": spec["ref_batch"] or "-", "grad ckpt": "yes" if spec["grad_checkpointing"] else "no",
            "frozen": spec["ref_precision"] if spec["kind"] == "dive" else "-",
            "peak_mib": value / 2**20 if value is not None else None,
            "vs_flyp": value / base if value is not None and base else None,
            "vs_flyp_same": value / same if value is not None and same else None,
            "error": res.get("error", "").splitlines()[-1] if "error" in res else None,
        })
    return rows


# --- output ----------------------------------------------------------------------------------------
def time_table(rows, memory):
    lines = []
    for r in rows:
        mem = memory.get((r["model"], r["precision"], r["B'"]))
        if r.get("oom"):
            lines.append([r["model"], r["precision"], r["frozen"], r["B"], r["B'"], fmt(1000 * r["flyp_s"], 1),
                          f"{100 * r['optimizer_share']:.0f}%", "OOM"] + ["-"] * (len(TIME_HEADERS) - 9) + [fmt(mem)])
            continue
        lines.append([
            r["model"], r["precision"], r["frozen"], r["B"], r["B'"], fmt(1000 * r["flyp_s"], 1),
            f"{100 * r['optimizer_share']:.0f}%",
            fmt(1000 * r["dive_s"], 1),
            f"{r['dive_ratio']:.2f} ({r['dive_ratio_min']:.2f}-{r['dive_ratio_max']:.2f})",
            fmt(r["c"]), fmt(r["floor"]), fmt(r["floor_c"]), fmt(r["dive_vs_floor_c"]), fmt(r["cache_ratio"]),
            fmt(r["cache_vs_floor"]), f"{100 * r['frozen_share']:.0f}%", fmt(mem),
        ])
    return markdown_table(TIME_HEADERS, lines)


def memory_table(rows):
    lines = [[r["model"], r["precision"], r["config"], r["B"], r["B'"], r["grad ckpt"], r["frozen"],
              r["error"] or fmt(r["peak_mib"], 0), fmt(r["vs_flyp"]), fmt(r["vs_flyp_same"])] for r in rows]
    return markdown_table(MEM_HEADERS, lines)


def parse_map(spec, cast=int):
    out = {}
    for item in filter(None, (spec or "").split(",")):
        name, _, value = item.partition("=")
        out[MODEL_ALIASES.get(name, name)] = cast(value)
    return out


def bf16_supported(device):
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.ones(4, 4) @ torch.ones(4, 4)
        return True
    except RuntimeError:
        return False


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default="tiny,ViT-B-16", help="Comma list; 'tiny' is the test-suite's tiny model.")
    p.add_argument("--precisions", default="fp32,amp_bf16",
                   help="Comma list of open_clip --precision values (amp_bf16 is skipped where unsupported).")
    p.add_argument("--batch-sizes", default="tiny=32,ViT-B-16=8", help="ID batch size B per model: name=B,...")
    p.add_argument("--image-sizes", default="", help="Image size per model (name=px); default: the model's own.")
    p.add_argument("--ref-fractions", default="0.25,0.5,1", help="B'/B values.")
    p.add_argument("--ref-precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="Frozen model precision (--dive-ref-precision); auto: bf16 with amp_bf16, else fp32.")
    p.add_argument("--rounds", type=int, default=3, help="Timed rounds (after one untimed warm-up round).")
    p.add_argument("--steps-per-turn", type=int, default=2, help="Consecutive steps of one configuration per turn.")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="Measure peak memory (one fresh process per configuration).")
    p.add_argument("--memory-steps", type=int, default=2, help="Steps per memory probe (2: optimizer state exists).")
    p.add_argument("--memory-fractions", default=None,
                   help="B'/B values to probe for memory (default: --ref-fractions).")
    p.add_argument("--memory-precisions", default=None, help="Precisions to probe for memory (default: all).")
    p.add_argument("--budget-s", type=float, default=None,
                   help="Start no new configuration or memory probe after this many seconds (output stays valid).")
    p.add_argument("--memory-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="Also probe FLYP and DiVE B'=B/2 with --grad-checkpointing.")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: elapsed time (synchronised on CUDA). cpu: the process's CPU time, for a shared CPU "
                        "machine where other jobs steal cores (use with OMP_NUM_THREADS=1).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="Also write the results as JSON here.")
    p.add_argument("--markdown", default=None, help="Also write the tables (markdown) here.")
    a = p.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    register_tiny_model()
    models = [MODEL_ALIASES.get(m, m) for m in a.models.split(",") if m]
    batch_sizes, image_sizes = parse_map(a.batch_sizes), parse_map(a.image_sizes)
    fractions = [float(f) for f in a.ref_fractions.split(",")]
    precisions = [x for x in a.precisions.split(",") if x]
    for x in precisions:
        if x not in PRECISIONS:
            p.error(f"--precisions: {x} is not one of {', '.join(PRECISIONS)}")
    skipped = [x for x in precisions if x == "amp_bf16" and not bf16_supported(a.device)]
    precisions = [x for x in precisions if x not in skipped]
    cuda = torch.device(a.device).type == "cuda"

    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    if a.clock == "cpu" and cuda:
        p.error("--clock cpu measures CPU work; use the wall clock on CUDA")
    started = time.time()
    machine = machine_description(a.device)
    if cuda:  # as open_clip_train.main does on CUDA
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.deterministic = False
    memory_precisions = a.memory_precisions.split(",") if a.memory_precisions else precisions
    memory_fractions = ([float(f) for f in a.memory_fractions.split(",")] if a.memory_fractions else fractions)
    state = {"rows": [], "noise": {}, "specs": [], "mem": [], "notes": []}

    def over_budget(what):
        if a.budget_s and time.time() - started > a.budget_s:
            state["notes"].append(f"skipped (time budget of {a.budget_s} s spent): {what}")
            log(state["notes"][-1])
            return True
        return False

    def report(final):
        mem_rows = memory_rows(state["specs"], state["mem"], cuda) if state["specs"] else []
        mem_ratio = {(r["model"], r["precision"], r["B'"]): r["vs_flyp"] for r in mem_rows
                     if r["config"] == "DiVE" and r["grad ckpt"] == "no"}
        out = [f"Machine: {machine}", ""]
        sizes = ", ".join(f"{m} {image_sizes.get(m) or _model_image_size(m)} px" for m in models)
        out += [f"Step time (median of {a.rounds} rounds x {a.steps_per_turn} steps per configuration, alternating; "
                f"images: {sizes}; device {a.device}; {a.clock} clock):", "", time_table(state["rows"], mem_ratio),
                ""]
        for (m, prec), n in state["noise"].items():
            out.append(f"noise {m} {prec}: FLYP step relative IQR {100 * n['flyp_rel_iqr']:.0f}% over "
                       f"{n['steps_per_config']} steps"
                       + ("" if n["weights_finite"] else "; WARNING: non-finite weights"))
        if skipped:
            out.append(f"skipped (unsupported on {a.device}): {', '.join(skipped)}")
        out += state["notes"]
        if mem_rows:
            measure = "CUDA max allocated (whole process)" if cuda else "peak RSS growth after model creation"
            out += ["", f"Peak memory ({measure}; {a.memory_steps} steps, one fresh process each):", "",
                    memory_table(mem_rows)]
        out += ["", "Targets: DiVE/floor <= 1.10 ((B+B'+cB')/B, no cache); cache/(B+B')/B <= 1.10; "
                "mem DiVE/FLYP at B'=B/2 <= 1.6.",
                f"Wall time: {time.time() - started:.0f} s" + ("" if final else " (in progress)")]
        text = "\n".join(out)
        if a.markdown:
            with open(a.markdown, "w") as f:
                f.write(text + "\n")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"machine": machine, "device": a.device, "time": state["rows"], "memory": mem_rows,
                           "noise": {f"{k[0]} {k[1]}": v for k, v in state["noise"].items()}}, f, indent=1)
        return text

    for model_name in models:
        B = batch_sizes.get(model_name, 32)
        for precision in precisions:
            rp = resolve_ref_precision(a.ref_precision, precision, a.device)
            if over_budget(f"timing {model_name} {precision}"):
                continue
            log(f"timing {model_name} {precision} B={B} frozen={rp}")
            try:
                r, n = time_configuration(model_name, precision, B, image_sizes.get(model_name), fractions, rp,
                                          a.device, a.rounds, a.steps_per_turn, a.seed, log, clock)
            except torch.OutOfMemoryError:
                state["notes"].append(f"OOM: {model_name} {precision} B={B} (FLYP itself); skipped")
                log(state["notes"][-1])
                if cuda:
                    torch.cuda.empty_cache()
                continue
            state["rows"] += r
            state["noise"][(model_name, precision)] = n
            gc.collect()
            if cuda:  # give the timing run's cached blocks back before the memory probes' processes start
                torch.cuda.empty_cache()
            report(False)
            if a.memory and precision in memory_precisions:
                for spec in memory_specs(model_name, precision, B, image_sizes.get(model_name), memory_fractions,
                                         rp, a.device, a.memory_steps, a.seed, a.memory_checkpointing):
                    if over_budget(f"memory {model_name} {precision} {spec['kind']} B'={spec['ref_batch']} "
                                   f"ckpt={spec['grad_checkpointing']}"):
                        continue
                    state["mem"] += measure_memory([spec], log)
                    state["specs"].append(spec)
                    report(False)
    print(report(True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
