"""The shard writer: ImageFolder / caption tables / arrays -> the project's WebDataset format."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from helpers import REPO, run_module, test_env
from open_clip_dive.tools import make_shards as ms


def _read(pattern_dir, prefix="shard"):
    """All samples of a shard directory, in shard order: list of dicts ext -> bytes."""
    import tarfile

    with open(os.path.join(pattern_dir, "sizes.json")) as f:
        sizes = json.load(f)
    samples = []
    for name in sorted(sizes):
        assert name.startswith(prefix + "-")
        with tarfile.open(os.path.join(pattern_dir, name)) as tf:
            cur = None
            for m in tf.getmembers():
                key, ext = os.path.basename(m.name).split(".", 1)
                if cur is None or cur["__key__"] != key:
                    cur = {"__key__": key}
                    samples.append(cur)
                cur[ext] = tf.extractfile(m).read()
        assert sum(1 for s in samples if "__shard" not in s) >= sizes[name]
    assert len(samples) == sum(sizes.values())
    return samples


def _decode(b):
    return np.asarray(Image.open(io.BytesIO(b)))


def _tree_bytes(d):
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d)) if n.endswith(".tar")}


def test_arrays_api_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (23, 12, 12), dtype=np.uint8)
    labels = rng.integers(0, 3, 23)
    res = ms.write_array_shards(images, labels, ["a", "b", "c"], str(tmp_path / "out"), shard_size=5,
                                prefix="tiny", progress=False, extra_files={"templates.json": ["a photo of a {}."]})
    assert res.num_shards == 5 and res.num_samples == 23
    assert res.pattern == str(tmp_path / "out" / "tiny-{000000..000004}.tar")
    assert json.load(open(tmp_path / "out" / "classnames.json")) == ["a", "b", "c"]
    assert json.load(open(tmp_path / "out" / "templates.json")) == ["a photo of a {}."]
    sizes = json.load(open(tmp_path / "out" / "sizes.json"))
    assert sizes == {f"tiny-{i:06d}.tar": (5 if i < 4 else 3) for i in range(5)}
    samples = _read(str(tmp_path / "out"), "tiny")
    for s in samples:
        i = int(s["__key__"])
        assert np.array_equal(_decode(s["png"]), images[i])  # PNG is lossless
        assert s["cls"] == str(labels[i]).encode()
    assert not (tmp_path / "out" / ms.STATE_DIR).exists()

    # what the trainer does with it: webdataset reads the brace pattern
    import webdataset as wds

    ds = wds.WebDataset(res.pattern, shardshuffle=False).decode("pil").to_tuple("png", "cls")
    got = list(ds)
    assert len(got) == 23 and got[0][0].size == (12, 12)


def test_arrays_captions_rgb_float_and_shuffle(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.random((10, 8, 8, 3)).astype(np.float32)  # floats in [0, 1] are scaled to 0..255
    caps = [f"caption number {i} é" for i in range(10)]
    res = ms.write_array_shards(images, None, None, str(tmp_path / "c"), captions=caps, shard_size=4,
                                shuffle=True, seed=3, progress=False)
    samples = _read(res.directory)
    assert [int(s["__key__"]) for s in samples] != list(range(10))  # shuffled order
    for s in samples:
        i = int(s["__key__"])
        assert s["txt"].decode() == caps[i]
        assert "cls" not in s
        np.testing.assert_array_equal(_decode(s["png"]), np.rint(images[i] * 255).astype(np.uint8))
    assert not (tmp_path / "c" / "classnames.json").exists()


def test_arrays_bad_input(tmp_path):
    with pytest.raises(ms.ShardError, match="labels"):
        ms.write_array_shards(np.zeros((3, 4, 4), np.uint8), [0, 1], ["x", "y"], str(tmp_path / "a"), progress=False)
    with pytest.raises(ms.ShardError, match="class names"):
        ms.write_array_shards(np.zeros((2, 4, 4), np.uint8), [0, 5], ["x", "y"], str(tmp_path / "b"), progress=False)
    with pytest.raises(ms.ShardError, match="labels.*captions"):
        ms.write_array_shards(np.zeros((2, 4, 4), np.uint8), None, None, str(tmp_path / "c"), progress=False)


def _imagefolder(root, per_class=5, classes=("n02", "n01", "n03")):
    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (10 + i, 14, 3), dtype=np.uint8)).save(
                os.path.join(root, c, f"img{i}.JPEG" if i % 2 else f"img{i}.png"))
    return sorted(classes)


def test_imagefolder_cli(tmp_path):
    src = tmp_path / "train"
    classes = _imagefolder(str(src))
    (src / "n01" / "broken.jpg").write_bytes(b"not an image")
    (src / "n01" / "notes.txt").write_text("ignored: not an image extension")
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"n01": "tench", "n02": "goldfish", "n03": "shark"}))
    out = tmp_path / "shards"
    r = run_module("open_clip_dive.tools.make_shards",
                   ["imagefolder", src, "--output", out, "--shard-size", 4, "--processes", 2, "--classnames", names],
                   cwd=REPO)
    assert r.returncode == 0, r.stderr
    pattern = r.stdout.strip().splitlines()[-1]
    assert pattern == str(out / "shard-{000000..000003}.tar")
    assert "skipped 1" in r.stderr and "broken.jpg" in r.stderr
    assert json.load(open(out / "classnames.json")) == ["tench", "goldfish", "shark"]
    samples = _read(str(out))
    assert len(samples) == 15
    by_cls = {}
    for s in samples:
        ext = "jpg" if "jpg" in s else "png"
        assert ext in s
        by_cls.setdefault(int(s["cls"]), []).append(s)
    assert {k: len(v) for k, v in by_cls.items()} == {0: 5, 1: 5, 2: 5}
    # keep: jpg/png bytes are the files' own bytes
    orig = {open(os.path.join(src, c, f), "rb").read() for c in classes for f in os.listdir(src / c)}
    assert all((s.get("jpg") or s.get("png")) in orig for s in samples)
    manifest = json.load(open(out / "make_shards.json"))
    assert manifest["skipped_count"] == 1 and manifest["num_samples"] == 15


def test_imagefolder_resize_and_jpg(tmp_path):
    src = tmp_path / "train"
    _imagefolder(str(src), per_class=2, classes=("a", "b"))
    res = ms.write_imagefolder_shards(str(src), str(tmp_path / "o"), image_format="jpg", resize=6, progress=False)
    for s in _read(res.directory):
        assert min(Image.open(io.BytesIO(s["jpg"])).size) == 6
    assert res.classnames == ["a", "b"]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
def test_captions_table(tmp_path, fmt):
    import pandas as pd

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rows = []
    for i in range(7):
        Image.fromarray(np.full((9, 9, 3), i * 30, np.uint8)).save(imgs / f"{i}.png")
        rows.append({"filepath": f"imgs/{i}.png", "title": f"a grey square, shade {i}, \"quoted\""})
    df = pd.DataFrame(rows)
    table = tmp_path / f"table.{fmt}"
    if fmt == "parquet":
        pytest.importorskip("pyarrow", reason="parquet tables need pyarrow (pip install pyarrow)")
        df.to_parquet(table)
    else:
        df.to_csv(table, sep="\t" if fmt == "tsv" else ",", index=False)
    out = tmp_path / "o"
    r = run_module("open_clip_dive.tools.make_shards", ["captions", table, "--output", out, "--shard-size", 3,
                                                        "--no-shuffle", "-q"], cwd=REPO)
    assert r.returncode == 0, r.stderr
    samples = _read(str(out))
    assert [s["txt"].decode() for s in samples] == [row["title"] for row in rows]
    assert [int(_decode(s["png"])[0, 0, 0]) for s in samples] == [i * 30 for i in range(7)]
    assert not (out / "classnames.json").exists()


def test_captions_errors(tmp_path):
    t = tmp_path / "t.csv"
    t.write_text("a,b\nx.png,hello\n")
    r = run_module("open_clip_dive.tools.make_shards", ["captions", t, "--output", tmp_path / "o"], cwd=REPO)
    assert r.returncode == 2 and "--image-col" in r.stderr and "Traceback" not in r.stderr
    r = run_module("open_clip_dive.tools.make_shards", ["captions", t, "--output", tmp_path / "o",
                                                        "--image-col", "a", "--caption-col", "nope"], cwd=REPO)
    assert r.returncode == 2 and "no column 'nope'" in r.stderr
    r = run_module("open_clip_dive.tools.make_shards", ["captions", t, "--output", tmp_path / "o",
                                                        "--image-col", "a", "--caption-col", "b"], cwd=REPO)
    assert r.returncode == 2 and "no sample could be written" in r.stderr
    r = run_module("open_clip_dive.tools.make_shards", ["imagefolder", tmp_path / "missing", "--output",
                                                        tmp_path / "o2"], cwd=REPO)
    assert r.returncode == 2 and "not a directory" in r.stderr


def _npz(path, n=40, size=16, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
             labels=rng.integers(0, 4, n), classnames=np.array(["w", "x", "y", "z"]))


def test_refuses_overwrite_then_overwrite(tmp_path):
    npz = tmp_path / "d.npz"
    _npz(npz)
    out = tmp_path / "o"
    args = ["arrays", npz, "--output", out, "--shard-size", 10, "-q"]
    assert run_module("open_clip_dive.tools.make_shards", args, cwd=REPO).returncode == 0
    first = _tree_bytes(out)
    (out / "mine.txt").write_text("a file of the user's")
    r = run_module("open_clip_dive.tools.make_shards", args, cwd=REPO)
    assert r.returncode == 2 and "not empty" in r.stderr and "--resume" in r.stderr
    # same arguments + --resume on a finished run: nothing to do, same pattern printed
    r = run_module("open_clip_dive.tools.make_shards", args + ["--resume"], cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip().endswith("shard-{000000..000003}.tar")
    # different arguments + --resume: refused
    r = run_module("open_clip_dive.tools.make_shards", ["arrays", npz, "--output", out, "--shard-size", 7, "--resume"],
                   cwd=REPO)
    assert r.returncode == 2 and "different inputs" in r.stderr
    r = run_module("open_clip_dive.tools.make_shards", ["arrays", npz, "--output", out, "--shard-size", 20,
                                                        "--overwrite", "-q"], cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert sorted(_tree_bytes(out)) == ["shard-000000.tar", "shard-000001.tar"]
    assert (out / "mine.txt").read_text() == "a file of the user's"  # only its own files are replaced
    assert json.load(open(out / "classnames.json")) == ["w", "x", "y", "z"]
    assert first  # (kept for the byte comparison below)


def test_resume_after_failure_is_byte_identical(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (30, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 2, 30)
    clean = ms.write_array_shards(images, labels, ["p", "q"], str(tmp_path / "clean"), shard_size=4, progress=False)

    real = ms._write_shard
    calls = {"n": 0}

    def dying(job, opt):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return real(job, opt)

    monkeypatch.setattr(ms, "_write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        ms.write_array_shards(images, labels, ["p", "q"], str(tmp_path / "r"), shard_size=4, progress=False)
    monkeypatch.setattr(ms, "_write_shard", real)
    assert len([n for n in os.listdir(tmp_path / "r") if n.endswith(".tar")]) == 3
    assert not (tmp_path / "r" / "sizes.json").exists()
    with pytest.raises(ms.ShardError, match="not empty"):
        ms.write_array_shards(images, labels, ["p", "q"], str(tmp_path / "r"), shard_size=4, progress=False)
    res = ms.write_array_shards(images, labels, ["p", "q"], str(tmp_path / "r"), shard_size=4, progress=False,
                                resume=True)
    assert res.sizes == clean.sizes
    assert _tree_bytes(tmp_path / "r") == _tree_bytes(tmp_path / "clean")


def test_multiprocess_equals_single_process(tmp_path):
    npz = tmp_path / "d.npz"
    _npz(npz, n=50)
    for j, name in ((1, "one"), (3, "three")):
        r = run_module("open_clip_dive.tools.make_shards", ["arrays", npz, "--output", tmp_path / name,
                                                            "--shard-size", 6, "--processes", j, "-q"], cwd=REPO)
        assert r.returncode == 0, r.stderr
    assert _tree_bytes(tmp_path / "one") == _tree_bytes(tmp_path / "three")
    assert len(_tree_bytes(tmp_path / "one")) == 9


def test_sigkill_then_resume(tmp_path):
    """A real kill -9 in the middle of a multi-process run; --resume finishes it with the same bytes."""
    npz = tmp_path / "big.npz"
    _npz(npz, n=3000, size=48, seed=5)
    out, clean = tmp_path / "killed", tmp_path / "clean"
    args = ["arrays", npz, "--shard-size", 50, "--processes", 2, "-q"]
    r = run_module("open_clip_dive.tools.make_shards", args + ["--output", clean], cwd=REPO)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen([sys.executable, "-m", "open_clip_dive.tools.make_shards"] + [str(a) for a in args]
                            + ["--output", str(out)], cwd=REPO, env=test_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and sum(n.endswith(".tar") for n in os.listdir(out)) >= 3:
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the driver and its workers
    proc.wait()
    if killed:
        assert not (out / "sizes.json").exists()
    r = run_module("open_clip_dive.tools.make_shards", args + ["--output", out, "--resume"], cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert _tree_bytes(out) == _tree_bytes(clean)
    assert json.load(open(out / "sizes.json")) == json.load(open(clean / "sizes.json"))
    assert not (out / ms.STATE_DIR).exists()
