"""Run the frozen (pre-trained) model once over the reference shards and store its embeddings.

    python -m open_clip_dive.tools.cache_reference --model ViT-B-16-quickgelu --pretrained openai \\
        --dive-ref-data 'cc3m/{00000..00575}.tar' --output cc3m/dive_ref_cache --device cuda

Then train with `--dive-ref-cache cc3m/dive_ref_cache`: the frozen model is not run (nor kept in memory).
Reference images go through open_clip's deterministic eval transform, here and in training with the cache.
Each shard's file is written atomically; a killed run resumes where it stopped.
"""

import argparse
import json
import logging
import os
import sys

import open_clip
import torch
import webdataset as wds
from open_clip_train.data import expand_urls
from tqdm import tqdm

from ..data import caption_text, collate, has_image, ToTrainingSample
from ..checkpoint import atomic_save
from ..errors import DiveUsageError
from ..provenance import check_activation, preprocess_kwargs
from ..params import check_shards
from ..refcache import CACHE_VERSION, META, embedding_file, model_fingerprint


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m open_clip_dive.tools.cache_reference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="open_clip model name (as for training).")
    p.add_argument("--pretrained", default=None, help="Weights of the frozen model (tag, file or none).")
    p.add_argument("--dive-model-config", action="append", default=None, help="Extra open_clip model config.")
    p.add_argument("--force-quick-gelu", action="store_true")
    p.add_argument("--force-image-size", type=int, nargs="+", default=None)
    p.add_argument("--dive-ref-data", required=True, help="Reference shards (brace pattern, '::' sources).")
    p.add_argument("--output", default=None, help="Cache directory. Default: dive_ref_cache next to the shards.")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="Precision of the forward pass; embeddings are stored in float32.")
    return p.parse_args(argv)


def build_frozen(args):
    for path in args.dive_model_config or ():
        open_clip.add_model_config(path)
    # the weights' own activation and preprocessing, as the trainer uses them (a file: its run's tag's)
    trained = check_activation("--pretrained", args.pretrained, args.model, args.force_quick_gelu)
    model, _, preprocess_val = open_clip.create_model_and_transforms(
        args.model, args.pretrained, device=args.device, force_quick_gelu=args.force_quick_gelu,
        force_image_size=args.force_image_size, output_dict=True, **preprocess_kwargs(trained.preprocess))
    model.eval().requires_grad_(False)
    return model, preprocess_val, open_clip.get_tokenizer(args.model)


@torch.no_grad()
def embed_shard(url, model, preprocess, tokenizer, args):
    pipeline = wds.DataPipeline(
        wds.SimpleShardList([url]), wds.tarfile_to_samples(), wds.select(has_image),
        wds.map(ToTrainingSample(caption_text, preprocess, tokenizer)),
        wds.batched(args.batch_size, collation_fn=collate, partial=True))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    keys, images, texts = [], [], []
    for batch in pipeline:
        with torch.autocast(device_type=torch.device(args.device).type, dtype=dtype, enabled=dtype != torch.float32):
            out = model(batch["image"].to(args.device), batch["text"].to(args.device))
        keys += [k.split("/", 1)[1] for k in batch["key"]]
        images.append(out["image_features"].float().cpu())
        texts.append(out["text_features"].float().cpu())
    return {"keys": keys, "image": torch.cat(images), "text": torch.cat(texts)}


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        check_shards(args.dive_ref_data, "--dive-ref-data")
        urls, _ = expand_urls(args.dive_ref_data)
        output = args.output or os.path.join(os.path.dirname(urls[0]), "dive_ref_cache")
        model, preprocess, tokenizer = build_frozen(args)
        meta = {"version": CACHE_VERSION, "model": args.model, "pretrained": args.pretrained,
                "fingerprint": model_fingerprint(model), "image_size": list(model.visual.image_size)
                if isinstance(model.visual.image_size, (tuple, list)) else [model.visual.image_size] * 2,
                "preprocess": "open_clip eval transform", "shards": [os.path.basename(u) for u in urls]}
        os.makedirs(output, exist_ok=True)
        meta_path = os.path.join(output, META)
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                old = json.load(f)
            if old.get("fingerprint") != meta["fingerprint"]:
                raise DiveUsageError(f"--output: '{output}' holds a cache of other weights ({old.get('model')} "
                                     f"{old.get('pretrained')}); choose another directory or delete it")
        with open(meta_path + ".partial", "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(meta_path + ".partial", meta_path)
        todo = [u for u in urls if not os.path.exists(os.path.join(output, embedding_file(u)))]
        logging.info(f"{len(urls) - len(todo)} of {len(urls)} shards already cached in {output}")
        for url in tqdm(todo, desc="shards", unit="shard"):
            atomic_save(embed_shard(url, model, preprocess, tokenizer, args), os.path.join(output, embedding_file(url)))
        print(output)
        return 0
    except DiveUsageError as e:
        print(f"cache_reference: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
