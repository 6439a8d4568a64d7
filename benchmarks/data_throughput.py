"""Data pipeline throughput per loader worker: the ID stream and the reference stream at 224 px.

Runs the plugin's real streams (`open_clip_dive.data.id_stream` / `reference_stream`: tar reading, seeded
shuffle, JPEG decode, open_clip's train augmentation with the per-sample seeded RNG, class prompt or caption,
tokenisation, collation) on generated ImageNet-like JPEG shards (about 450x340 px, 90 quality), with
`--workers 0`, i.e. one worker's work in this process. Also times the stages alone on the same samples, and,
given the rate a GPU consumes samples at (from `step_time.py --json`), says how many workers each stream needs.

    python benchmarks/data_throughput.py                       # per-worker images/s
    python benchmarks/data_throughput.py --step-time-json st.json   # + --workers / --dive-ref-workers to use
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_description, markdown_table, median  # noqa: E402

import numpy as np  # noqa: E402

CLASSNAMES = ["goldfish", "tabby cat", "fire truck", "acoustic guitar", "daisy", "espresso", "tree frog", "yurt",
              "lighthouse", "red fox"]
CAPTION_WORDS = ("a man riding a bicycle down a busy street in the city at night with lights behind him while "
                 "people walk past shops and cars on a rainy evening").split()
THROUGHPUT_HEADERS = ["stream", "workers", "samples", "images/s (whole pipeline)", "per worker", "decode ms",
                      "augment ms", "text+tokenize ms"]
WORKER_HEADERS = ["model", "precision", "B", "B'", "DiVE step ms", "ID images/s", "--workers", "ref images/s",
                  "--dive-ref-workers"]


def _photo(rng: np.random.Generator) -> np.ndarray:
    """A natural-looking image: smooth colour field, a few blobs, mild noise; ImageNet-like size."""
    from PIL import Image

    w, h = int(rng.integers(400, 500)), int(rng.integers(300, 375))
    coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.float32)
    field = np.array(Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(4):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(20, 90)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r ** 2
        field[mask] = rng.uniform(0, 255, 3)
    return np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)


def write_shards(directory, prefix, num_samples, num_shards, captions, seed):
    """`prefix-000000.tar ...` with jpg (quality 90) + cls (ID) or jpg + txt (reference), sizes.json and
    classnames.json, written by the project's shard tool; returns the brace pattern."""
    from open_clip_dive.tools.make_shards import write_array_shards

    rng = np.random.default_rng(seed)
    images = [_photo(rng) for _ in range(num_samples)]
    labels = texts = None
    if captions:
        texts = [" ".join(rng.choice(CAPTION_WORDS, size=int(rng.integers(8, 16)))) for _ in range(num_samples)]
    else:
        labels = rng.integers(len(CLASSNAMES), size=num_samples)
    return write_array_shards(images, labels, CLASSNAMES, directory, captions=texts, prefix=prefix,
                              shard_size=math.ceil(num_samples / num_shards), image_format="jpg", quality=90,
                              overwrite=True, progress=False).pattern


def make_args(id_shards, ref_shards, classnames, batch_size, workers, num_samples, model):
    from open_clip_train.params import parse_args as upstream_parse_args

    from open_clip_dive.params import parse_args

    argv = ["--model", model, "--train-data", id_shards, "--classnames", classnames, "--templates", "openai",
            "--batch-size", str(batch_size), "--workers", str(workers), "--train-num-samples", str(num_samples),
            "--loss", "dive", "--dive-ref-data", ref_shards, "--dive-ref-num-samples", str(num_samples),
            "--dive-ref-workers", str(workers), "--seed", "0"]
    args = parse_args(argv, upstream_parse_args)
    args.world_size, args.rank = 1, 0
    return args


def train_transform(model, image_size):
    """open_clip's train preprocessing for the model, as create_model_and_transforms builds it."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = open_clip.get_model_config(model) or {}
    size = image_size or cfg.get("vision_cfg", {}).get("image_size", 224)
    return image_transform_v2(PreprocessCfg(size=size), is_train=True)


def time_stream(info, num_batches, clock=time.perf_counter):
    """Samples/s of a stream: batches pulled until the epoch ends (first batch excluded: shuffle buffer fill)."""
    it = iter(info.dataloader)
    first = next(it)
    batch_size = first["image"].shape[0]
    start, n = clock(), 0
    for _ in range(num_batches - 1):
        try:
            next(it)
        except StopIteration:
            break
        n += batch_size
    elapsed = clock() - start
    return n, n / elapsed if elapsed > 0 else float("nan")


def time_stages(shards, preprocess, tokenizer, make_text, limit, clock=time.perf_counter):
    """ms per sample of each stage alone, on the raw samples of the shards (median over samples)."""
    import webdataset as wds

    from open_clip_dive.data import _decode_image

    from open_clip_train.data import expand_urls

    urls, _ = expand_urls(shards)
    raw = []
    for sample in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()):
        raw.append(sample)
        if len(raw) >= limit:
            break
    decode, augment, text = [], [], []
    for sample in raw:
        t0 = clock()
        image = _decode_image(sample)
        t1 = clock()
        preprocess(image)
        t2 = clock()
        tokenizer(make_text(sample))
        t3 = clock()
        decode.append(t1 - t0)
        augment.append(t2 - t1)
        text.append(t3 - t2)
    return {k: 1000 * median(v) for k, v in (("decode", decode), ("augment", augment), ("text", text))}


def workers_needed(rows, per_worker_id, per_worker_ref, headroom):
    out = []
    for r in rows:
        if r.get("oom"):
            continue
        id_rate, ref_rate = r["id_samples_per_s"], r["ref_samples_per_s"]
        out.append([r["model"], r["precision"], r["B"], r["B'"], f"{1000 * r['dive_s']:.1f}", f"{id_rate:.0f}",
                    math.ceil(headroom * id_rate / per_worker_id), f"{ref_rate:.0f}",
                    math.ceil(headroom * ref_rate / per_worker_ref)])
    return markdown_table(WORKER_HEADERS, out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-16", help="Model whose tokenizer and image size are used.")
    p.add_argument("--image-size", type=int, default=None, help="Default: the model's (224 for ViT-B-16).")
    p.add_argument("--samples", type=int, default=384, help="Samples per stream (generated).")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", default="0",
                   help="Comma list of loader worker counts to time; 0 = one worker's work in this process.")
    p.add_argument("--stage-samples", type=int, default=64, help="Samples for the per-stage timing.")
    p.add_argument("--data-dir", default=None, help="Where to write the shards (default: a temporary folder).")
    p.add_argument("--step-time-json", default=None,
                   help="step_time.py --json output: prints the workers each stream needs to keep up with it.")
    p.add_argument("--headroom", type=float, default=1.2, help="Safety factor on the consumption rate.")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: this process's CPU time (for a shared machine; applies to the workers-0 rows and the "
                        "stage columns; rows with workers > 0 always use the wall clock).")
    p.add_argument("--markdown", default=None, help="Also write the output here.")
    a = p.parse_args(argv)
    if a.samples < 3 * a.batch_size:
        p.error(f"--samples {a.samples}: need at least 3 batches of --batch-size {a.batch_size} "
                "(the first is not timed)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import open_clip

    from open_clip_dive.data import caption_text, id_stream, reference_stream

    started = time.time()
    tmp = None if a.data_dir else tempfile.TemporaryDirectory(prefix="dive-data-bench-")
    root = a.data_dir or tmp.name
    t0 = time.perf_counter()
    id_shards = write_shards(os.path.join(root, "id"), "id", a.samples, a.shards, captions=False, seed=0)
    ref_shards = write_shards(os.path.join(root, "ref"), "ref", a.samples, a.shards, captions=True, seed=1)
    classnames = os.path.join(root, "id", "classnames.json")
    sizes = [len(open(os.path.join(root, "id", f), "rb").read()) for f in os.listdir(os.path.join(root, "id"))
             if f.endswith(".tar")]
    print(f"generated {2 * a.samples} JPEG samples ({sum(sizes) / a.samples / 1024:.0f} KiB each on average) in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)

    preprocess = train_transform(a.model, a.image_size)
    tokenizer = open_clip.get_tokenizer(a.model)
    rows = []
    per_worker = {}
    from open_clip_dive.data import ClassPrompt
    from open_clip_train.data import SharedEpoch

    prompt = ClassPrompt(classnames, "openai", 0, SharedEpoch(0))
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    stages = {"ID (class prompts)": time_stages(id_shards, preprocess, tokenizer, prompt, a.stage_samples, clock),
              "reference (captions)": time_stages(ref_shards, preprocess, tokenizer, caption_text, a.stage_samples,
                                                  clock)}
    for workers in [int(w) for w in a.workers.split(",")]:
        args = make_args(id_shards, ref_shards, classnames, a.batch_size, workers, a.samples, a.model)
        num_batches = a.samples // a.batch_size
        streams = {"ID (class prompts)": id_stream(args, preprocess, tokenizer, 0),
                   "reference (captions)": reference_stream(args, preprocess, tokenizer, num_batches, 0)}
        for name, info in streams.items():
            n, rate = time_stream(info, num_batches, clock if workers == 0 else time.perf_counter)
            share = rate / max(1, workers)
            if workers == 0:
                per_worker[name] = rate
            s = stages[name]
            rows.append([name, workers, n, f"{rate:.0f}", f"{share:.0f}", f"{s['decode']:.2f}", f"{s['augment']:.2f}",
                         f"{s['text']:.2f}"])

    size = a.image_size or (open_clip.get_model_config(a.model) or {}).get("vision_cfg", {}).get("image_size", 224)
    out = [f"Machine: {machine_description('cpu')}", "",
           f"Data pipeline throughput ({a.model} tokenizer, train augmentation at {size} px, batch {a.batch_size}, "
           f"{a.clock} clock; "
           "workers 0 = one worker's work in-process; stage columns: median ms per sample, each stage alone):", "",
           markdown_table(THROUGHPUT_HEADERS, rows)]
    if a.step_time_json and per_worker:
        with open(a.step_time_json) as f:
            step = json.load(f)
        out += ["", f"Loader workers per GPU to keep up with the DiVE steps of {a.step_time_json} "
                f"(per-worker rates above, x{a.headroom} headroom):", "",
                workers_needed(step["time"], per_worker["ID (class prompts)"], per_worker["reference (captions)"],
                               a.headroom)]
    out.append(f"\nWall time: {time.time() - started:.0f} s")
    text = "\n".join(out)
    print(text, flush=True)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
