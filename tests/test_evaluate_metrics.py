"""Zero-shot heads, metrics, the ImageNet-R/-A subsets, ObjectNet pooling and dataset preparation (no model needed)."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import f1_score

from open_clip_dive.errors import DiveUsageError
from open_clip_dive.evaluate.datasets import (imagenet_subset, imagenet_wnids, objectnet_mapping, prepare,
                                              pretty_folder_name, resolve_templates)
from open_clip_dive.evaluate.heads import HeadCache, build_zeroshot_head, zeroshot_logits
from open_clip_dive.evaluate.metrics import classification_metrics, macro_f1, project_logits
from open_clip_dive.evaluate.suites import DatasetError, DatasetSpec, resolve_suite


class TableTextModel:
    """encode_text looks each prompt up in a table of known embeddings (tokens are row indices)."""

    def __init__(self, table):
        self.table = table
        self.prompts = list(table)
        self.calls = 0

    def tokenizer(self, texts):
        return torch.tensor([self.prompts.index(t) for t in texts])

    def encode_text(self, tokens, normalize=False):  # open_clip's signature (build_zero_shot_classifier normalises)
        self.calls += 1
        out = torch.stack([torch.tensor(self.table[self.prompts[i]], dtype=torch.float32) for i in tokens.tolist()])
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out


def hand_built_case():
    # two classes, two templates; the raw embeddings have different norms, so averaging un-normalised vectors
    # (a common mistake) would give a different head than the convention (normalise, average, renormalise)
    templates, _ = resolve_templates(["a {}", "the {}"], "photo")
    table = {"a cat": [1.0, 0.0, 0.0], "the cat": [0.0, 10.0, 0.0],
             "a dog": [0.0, 0.0, 1.0], "the dog": [0.0, 1.0, 0.0]}
    return TableTextModel(table), ["cat", "dog"], templates


def test_head_is_mean_of_normalised_template_embeddings_renormalised():
    model, classes, templates = hand_built_case()
    head = build_zeroshot_head(model, model.tokenizer, classes, templates, batch_size=3)
    s = float(1 / np.sqrt(2))
    expected = torch.tensor([[s, s, 0.0], [0.0, s, s]]).t()  # cat: (e1 + e2)/|.|, dog: (e3 + e2)/|.|
    assert head.shape == (3, 2)
    torch.testing.assert_close(head, expected)
    # batching does not change the head
    torch.testing.assert_close(build_zeroshot_head(model, model.tokenizer, classes, templates, batch_size=1), head)


def test_zero_shot_accuracy_on_known_embeddings():
    model, classes, templates = hand_built_case()
    head = build_zeroshot_head(model, model.tokenizer, classes, templates)
    # image 0 points at e1 (cat only), image 1 at e3 (dog only), image 2 at e2 + 0.1 e1 (tie broken to cat),
    # image 3 at e2 + 0.1 e3 (dog). With the un-normalised average (cat ~ e2-heavy) image 3 would go to cat.
    images = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0.1, 1.0, 0], [0, 1.0, 0.1]])
    targets = torch.tensor([0, 1, 0, 1])
    logits = zeroshot_logits(images, head, logit_scale=100.0)
    assert logits.argmax(1).tolist() == [0, 1, 0, 1]
    m = classification_metrics(logits, targets)
    assert m["top1"] == 1.0 and m["top5"] is None and m["n"] == 4
    wrong = zeroshot_logits(images, head[:, [1, 0]])  # swapped head: every answer flips
    assert classification_metrics(wrong, targets)["top1"] == 0.0


def test_head_cache_builds_each_head_once():
    model, classes, templates = hand_built_case()
    cache = HeadCache()
    a = cache.get(model, model.tokenizer, classes, templates)
    calls = model.calls
    b = cache.get(model, model.tokenizer, classes, templates)
    assert a is b and model.calls == calls
    cache.get(model, model.tokenizer, classes[:1], templates)
    assert model.calls > calls


def test_top5_and_top1_counts():
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3], [0.0, 1, 2, 3, 4, 5, 6]])
    m = classification_metrics(logits, torch.tensor([4, 0]))
    assert m["top1"] == 0.0 and m["top5"] == 0.5  # class 4 is 5th for sample 0; class 0 is last for sample 1


def test_macro_f1_matches_scikit_learn_over_classes_in_the_ground_truth():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 12, 500)
    p = np.where(rng.random(500) < 0.6, y, rng.integers(0, 15, 500))  # predictions also hit classes 12..14
    y[y == 3] = 4  # class 3 never occurs in the ground truth
    expected = f1_score(y, p, average="macro", labels=np.unique(y))
    assert macro_f1(p, y) == pytest.approx(expected, abs=1e-12)
    assert macro_f1(y, y) == 1.0


def test_imagenet_class_lists_match_the_published_sublists():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids) and wnids[0] == "n01440764"
    r, a = imagenet_subset("imagenet-r"), imagenet_subset("imagenet-a")
    # WiSE-FT's CLASS_SUBLIST (src/datasets/imagenet_r.py / imagenet_a.py): count, ends and index sums
    assert len(r) == 200 and r[:5] == (1, 2, 4, 6, 8) and r[-3:] == (981, 983, 988) and sum(r) == 86135
    assert len(a) == 200 and a[:5] == (6, 11, 13, 15, 17) and a[-3:] == (986, 987, 988) and sum(a) == 102178


def test_200_class_masking_scores_only_the_subset():
    subset = list(imagenet_subset("imagenet-r"))
    logits = torch.full((3, 1000), -5.0)
    logits[0, 0] = 10.0                       # best overall is class 0, which is not in ImageNet-R ...
    logits[0, subset[7]] = 3.0                # ... so the prediction is the best *subset* class
    logits[1, subset[199]] = 1.0
    logits[2, subset[0]] = 2.0
    logits[2, subset[1]] = 2.5
    projected = project_logits(logits, [[i] for i in subset])
    assert projected.shape == (3, 200)
    assert projected.argmax(1).tolist() == [7, 199, 1]
    assert classification_metrics(projected, torch.tensor([7, 199, 0]))["top1"] == pytest.approx(2 / 3)
    # a 1000-way argmax would have scored sample 0 wrong: the subset convention matters
    assert logits[0].argmax().item() == 0


def test_objectnet_max_pooling_over_mapped_imagenet_logits():
    groups = [[409, 530], [3], [620, 621, 622]]  # e.g. alarm clock -> analog clock / digital clock
    logits = torch.zeros(2, 1000)
    logits[0, 530], logits[0, 409], logits[0, 3] = 4.0, 1.0, 3.0
    logits[1, 622], logits[1, 3] = 5.0, 4.9
    pooled = project_logits(logits, groups)
    torch.testing.assert_close(pooled, torch.tensor([[4.0, 3.0, 0.0], [0.0, 4.9, 5.0]]))
    assert pooled.argmax(1).tolist() == [0, 2]


def write_objectnet_mappings(root, with_folders=True):
    """The four files objectnet-1.0/mappings/ ships, for a toy 3-class slice (+ one unmapped class)."""
    os.makedirs(os.path.join(root, "mappings"))
    folder_to_label = {"alarm_clock": "Alarm clock", "banana": "Banana", "sock": "Sock", "weight_scale": "Weight scale"}
    label_to_imagenet = {"Alarm clock": "analog clock; digital clock", "Banana": "banana", "Sock": "sock"}
    # the 2012-id file order differs from the sorted-wnid (pytorch) order; pytorch_to_imagenet_2012_id maps between
    names_2012 = ["banana", "sock", "analog clock", "digital clock"]
    torch_idx = {"banana": 954, "sock": 806, "analog clock": 409, "digital clock": 530}
    json.dump(folder_to_label, open(os.path.join(root, "mappings", "folder_to_objectnet_label.json"), "w"))
    json.dump(label_to_imagenet, open(os.path.join(root, "mappings", "objectnet_to_imagenet_1k.json"), "w"))
    json.dump({str(torch_idx[n]): i for i, n in enumerate(names_2012)},
              open(os.path.join(root, "mappings", "pytorch_to_imagenet_2012_id.json"), "w"))
    open(os.path.join(root, "mappings", "imagenet_to_label_2012_v2"), "w").write("\n".join(names_2012) + "\n")
    if with_folders:
        for folder in folder_to_label:
            write_images(os.path.join(root, "images", folder), 2, size=12)


def write_images(folder, n, size=8, value=128):
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((size, size, 3), value + i, np.uint8)).save(os.path.join(folder, f"{i}.png"))


def test_objectnet_mapping_files_and_preparation(tmp_path):
    root = str(tmp_path / "objectnet-1.0")
    write_objectnet_mappings(root)
    mapping = objectnet_mapping(os.path.join(root, "mappings"))
    assert mapping == {"alarm_clock": [409, 530], "banana": [954], "sock": [806]}
    ds = prepare(DatasetSpec.from_dict({"name": "objectnet", "path": root}, "test"))  # the preset, by name
    assert ds.classnames == ["alarm clock", "banana", "sock"]
    assert ds.groups == [[409, 530], [954], [806]] and len(ds.head_classnames) == 1000
    assert ds.num_samples == 6 and ds.details["skipped_folders"] == 1  # weight_scale has no ImageNet class
    assert ds.spec.crop_border == 2
    images, labels, _ = next(ds.batches(lambda im: torch.tensor(im.size), batch_size=10))
    assert images.tolist() == [[8, 8]] * 6  # 12 px minus the 2 px border on each side
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]


def test_imagefolder_int_labels_are_not_sorted_as_strings(tmp_path):
    for c in range(12):
        write_images(str(tmp_path / "v2" / str(c)), 1, value=10 * c)
    spec = DatasetSpec(name="v2", type="imagefolder", labels="int", path=str(tmp_path / "v2"),
                       classnames=[f"c{i}" for i in range(12)])
    ds = prepare(spec)
    by_label = {label: path for path, label in ds._items}
    assert by_label[10].endswith(os.path.join("v2", "10", "0.png"))  # sorted() would give '10' label 2
    assert by_label[2].endswith(os.path.join("v2", "2", "0.png"))


def test_imagefolder_wnid_folders_with_the_200_class_subset(tmp_path):
    wnids = imagenet_wnids()
    r = imagenet_subset("imagenet-r")
    for idx in (r[0], r[5]):
        write_images(str(tmp_path / "r" / wnids[idx]), 2)
    spec = DatasetSpec.from_dict({"name": "imagenet-r", "path": str(tmp_path / "r")}, "test")  # preset by name
    ds = prepare(spec)
    assert len(ds.classnames) == 200 and ds.groups[5] == [r[5]]
    assert sorted({label for _, label in ds._items}) == [0, 5]  # positions in the subset, not folder order
    write_images(str(tmp_path / "r" / wnids[0]), 1)  # n01440764 (tench) is not an ImageNet-R class
    with pytest.raises(DatasetError, match="not in the 200-class subset"):
        prepare(spec)


@pytest.mark.parametrize("case", ["missing", "empty", "mismatch", "no-images", "not-wnid"])
def test_bad_datasets_raise_one_clear_error(tmp_path, case):
    root = tmp_path / "data"
    spec = DatasetSpec(name="bad", type="imagefolder", path=str(root))
    if case == "empty":
        root.mkdir()
    elif case == "mismatch":
        for c in "abc":
            write_images(str(root / c), 1)
        spec.classnames = ["a", "b"]
    elif case == "no-images":
        (root / "a").mkdir(parents=True)
    elif case == "not-wnid":
        write_images(str(root / "cats"), 1)
        spec.labels, spec.classnames = "wnid", "imagenet"
    expected = {"missing": "does not exist", "empty": "no class folders", "mismatch": "3 class folders .* has 2 names",
                "no-images": "no images", "not-wnid": "not an ImageNet wnid"}[case]
    with pytest.raises(DatasetError, match=expected) as info:
        prepare(spec)
    assert "'bad'" in str(info.value) and "\n" not in str(info.value)


def test_folder_names_become_readable_class_names():
    assert pretty_folder_name("Apply_Eye_Makeup") == "Apply Eye Makeup"
    assert pretty_folder_name("ApplyEyeMakeup") == "Apply Eye Makeup"
    assert pretty_folder_name("ankle-boot") == "ankle boot"


def test_builtin_suites_and_path_typos():
    specs = resolve_suite(["imagenet-ood"], {"imagenet": "/x/val"})
    assert [s.name for s in specs] == ["imagenet", "imagenet-v2", "imagenet-r", "imagenet-a", "imagenet-sketch", "objectnet"]
    assert specs[0].path == "/x/val" and specs[1].path is None and specs[2].class_subset == "imagenet-r"
    zs = resolve_suite(["zeroshot-10"])
    assert len(zs) == 10 and {s.group for s in zs} == {"zeroshot"}
    with pytest.raises(DiveUsageError, match="did you mean 'imagenet-r'"):
        resolve_suite(["imagenet-ood"], {"imagenet_r": "/x"})
    with pytest.raises(DiveUsageError, match="unknown suite"):
        resolve_suite(["imagenet-oood"])
    with pytest.raises(DatasetError, match="no path given; pass --data-path imagenet-v2=DIR"):
        prepare(specs[1])


def test_suite_file_with_paths_defaults_and_overrides(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text("suite: imagenet-ood\npaths:\n  imagenet: val\ndefaults:\n  max_samples: 7\n"
                    "datasets:\n  - {name: objectnet, preset: objectnet, path: /data/on, max_samples: 3}\n"
                    "  - {name: iwild, group: id, path: shards, primary: macro_f1}\n")
    ordered = resolve_suite([str(path)])
    assert [s.name for s in ordered][:6] == ["imagenet", "imagenet-v2", "imagenet-r", "imagenet-a", "imagenet-sketch",
                                             "objectnet"]  # the override kept its place
    specs = {s.name: s for s in ordered}
    assert specs["imagenet"].path == str(tmp_path / "val")     # relative to the suite file
    assert specs["objectnet"].path == "/data/on" and specs["objectnet"].max_samples == 3
    assert specs["imagenet-a"].max_samples == 7 and specs["iwild"].primary == "macro_f1"
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets:\n  - {name: x, grup: id}\n")
    with pytest.raises(DiveUsageError, match="unknown keys \\['grup'\\]"):
        resolve_suite([str(bad)])


def test_a_bad_template_or_subset_file_fails_only_its_dataset(tmp_path):
    from open_clip_dive.evaluate.runner import EvalConfig, SuiteEvaluator

    for c in "ab":
        write_images(str(tmp_path / "data" / c), 1)
    good = DatasetSpec(name="good", path=str(tmp_path / "data"))
    bad_templates = DatasetSpec(name="t", path=str(tmp_path / "data"), templates=str(tmp_path / "none.txt"))
    for c in "01":
        write_images(str(tmp_path / "ints" / c), 1)
    (tmp_path / "subset.json").write_text("[0, 1,")  # truncated JSON
    bad_subset = DatasetSpec(name="s", path=str(tmp_path / "ints"), labels="int", classnames=["x", "y", "z"],
                             class_subset=str(tmp_path / "subset.json"))
    ev = SuiteEvaluator([good, bad_templates, bad_subset], EvalConfig(progress=False))
    assert list(ev.prepared) == ["good"]
    assert "none.txt' does not exist" in ev.prepare_errors["t"]
    assert "class_subset file" in ev.prepare_errors["s"] and "subset.json' could not be read as JSON" in ev.prepare_errors["s"]
    assert all("\n" not in m for m in ev.prepare_errors.values())
