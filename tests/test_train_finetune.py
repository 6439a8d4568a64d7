"""End-to-end runs of every registry loss through `open_clip_dive.main` on the tiny model (CPU, fp32), the
classification head through resume, accumulation, DDP and the evaluator, the linear probe, and bad input."""

import json
import re
import sys

import open_clip
import pytest
import torch

from helpers import TINY_MODEL, TINY_MODEL_CFG, run_module
from open_clip_dive.losses import list_losses, load_head_file, loss_uses_reference
from open_clip_dive.main import main

pytestmark = pytest.mark.timeout(900)
HEAD_LOSSES = ("ce", "lp-ft", "lipsum", "car-ft")


def args_for(tiny_data, logs, name, *extra, classnames=True):
    return ["--dive-model-config", tiny_data["config"], "--model", TINY_MODEL, "--train-data", tiny_data["id"],
            *(["--classnames", tiny_data["classnames"]] if classnames else []), "--templates", "simple",
            "--batch-size", "8", "--device", "cpu", "--precision", "fp32", "--workers", "0", "--lr", "1e-3",
            "--warmup", "2", "--logs", str(logs), "--name", name, "--report-to", "none", "--log-every-n-steps", "1",
            "--seed", "0", "--train-num-samples", "16", *extra]


def logged(log_path, term):
    return [float(v) for v in re.findall(rf"(?<![_\w]){term}: ([0-9.e+-]+) \(", open(log_path).read())]


@pytest.fixture(scope="module")
def init_weights(tiny_data, tmp_path_factory):
    """A fixed 'pre-trained' tiny model (--pretrained FILE), so the evaluator can load the same weights."""
    open_clip.add_model_config(tiny_data["config"])
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_MODEL)
    path = tmp_path_factory.mktemp("init") / "init.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def probe_head(tiny_data, init_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "head.pt"
    result = run_module("open_clip_dive.tools.linear_probe", [
        "--model", TINY_MODEL, "--model-config", tiny_data["config"], "--pretrained", init_weights,
        "--train-data", tiny_data["id"], "--val-data", tiny_data["id"], "--classnames", tiny_data["classnames"],
        "--c-grid", "0.1,1,10", "--output", out, "--device", "cpu", "--workers", "0"], cwd=tmp_path_factory.getbasetemp())
    assert result.returncode == 0, result.stderr[-2000:]
    assert "best C" in result.stderr + result.stdout
    return str(out)


def test_linear_probe_writes_a_head_the_classifier_loss_accepts(probe_head, tiny_data):
    data = load_head_file(probe_head, num_classes=4, embed_dim=TINY_MODEL_CFG["embed_dim"])
    assert data["C"] in (0.1, 1.0, 10.0) and data["val_top1"] > 0.25  # 4 classes; the probe beats chance on train
    assert data["classnames"] == json.load(open(tiny_data["classnames"]))


@pytest.mark.parametrize("loss", list_losses())
def test_every_registry_loss_trains_its_loss_falls_and_the_checkpoint_loads(loss, tiny_data, tmp_path, init_weights,
                                                                            probe_head):
    extra = ["--loss", loss, "--epochs", "4", "--pretrained", init_weights, "--dive-avl-weight", "1",
             "--dive-pvl-weight", "1", "--dive-cosine-weight", "1", "--dive-replay-weight", "0.1"]
    if loss_uses_reference(loss):
        extra += ["--dive-ref-data", tiny_data["ref"]]
    if loss == "lp-ft":
        extra += ["--dive-head-init", probe_head]
    assert main(args_for(tiny_data, tmp_path, loss, *extra)) == 0
    total = logged(tmp_path / loss / "out.log", "Loss")
    assert len(total) == 8, total  # 4 epochs x 2 steps
    assert sum(total[-2:]) < sum(total[:2]), total  # the last epoch's loss is below the first's
    ckpt = tmp_path / loss / "checkpoints" / "epoch_4.pt"
    checkpoint = torch.load(ckpt, weights_only=True)
    model, _, _ = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=str(ckpt))
    assert set(model.state_dict()) == set(checkpoint["state_dict"])  # nothing of the loss in the model's weights
    if loss in HEAD_LOSSES:
        state = checkpoint["dive"]["loss_state"]
        assert state["head.weight"].shape == (4, TINY_MODEL_CFG["embed_dim"])
        init = torch.load(init_weights, weights_only=True)["state_dict"]
        assert torch.equal(checkpoint["state_dict"]["logit_scale"], init["logit_scale"])  # image tower + head only
        assert torch.equal(checkpoint["state_dict"]["token_embedding.weight"], init["token_embedding.weight"])
        assert not torch.equal(checkpoint["state_dict"]["visual.conv1.weight"], init["visual.conv1.weight"])


def test_ce_resume_restores_head_and_optimizer_state_exactly(tiny_data, tmp_path):
    assert main(args_for(tiny_data, tmp_path, "straight", "--loss", "ce", "--epochs", "2")) == 0
    assert main(args_for(tiny_data, tmp_path, "resumed", "--loss", "ce", "--epochs", "1")) == 0
    assert main(args_for(tiny_data, tmp_path, "resumed", "--loss", "ce", "--epochs", "2", "--resume", "latest")) == 0
    assert "Restored the loss state" in (tmp_path / "resumed" / "out.log").read_text()
    a, b = (torch.load(tmp_path / n / "checkpoints" / "epoch_2.pt", weights_only=True) for n in ("straight", "resumed"))
    first = torch.load(tmp_path / "resumed" / "checkpoints" / "epoch_1.pt", weights_only=True)
    assert not torch.equal(first["dive"]["loss_state"]["head.weight"], a["dive"]["loss_state"]["head.weight"])
    for key in ("head.weight", "head.bias"):
        assert torch.equal(a["dive"]["loss_state"][key], b["dive"]["loss_state"][key]), key
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys() and len(state_a) > 2
    for index, moments in state_a.items():
        for name, value in moments.items():
            assert torch.equal(value, state_b[index][name]), (index, name)
    # the head is in open_clip's two param groups: its weight decayed, its bias not
    groups = a["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.0, 0.2] and sum(len(g["params"]) for g in groups) == len(state_a)


def test_lipsum_accumulated_run_matches_the_whole_batch_run(tiny_data, tmp_path):
    # --eps 1: Adam's step is ~lr * gradient, so float noise in gradients that are 0 in exact arithmetic (attention
    # key biases) is not blown up to +-lr steps of random sign
    common = ["--loss", "lipsum", "--epochs", "1", "--dive-lipsum-weight", "10", "--dive-lipsum-texts", "6",
              "--eps", "1", "--lr", "0.05"]
    assert main(args_for(tiny_data, tmp_path, "whole", *common)) == 0
    assert main(args_for(tiny_data, tmp_path, "accum", *common, "--batch-size", "4", "--accum-freq", "2")) == 0
    a, b = (torch.load(tmp_path / n / "checkpoints" / "epoch_1.pt", weights_only=True) for n in ("whole", "accum"))
    assert logged(tmp_path / "whole" / "out.log", "Lipsum_loss")[-1] > 0
    for key, value in list(a["state_dict"].items()) + [(k, v) for k, v in a["dive"]["loss_state"].items()
                                                       if torch.is_tensor(v)]:
        other = b["state_dict"].get(key, b["dive"]["loss_state"].get(key))
        assert torch.allclose(value.float(), other.float(), atol=1e-6), key
    assert a["dive"]["loss_state"]["head.bias"].abs().max() > 1e-4  # it trained


def _suite(tmp_path, tiny_data):
    other = [f"other-{i}" for i in range(4)]  # same images, other classes: a "zero-shot" task for the text head
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"datasets": [
        {"name": "tiny-id", "group": "id", "type": "wds", "path": tiny_data["id"], "classnames": tiny_data["classnames"],
         "templates": "simple"},
        {"name": "tiny-zs", "group": "zeroshot", "type": "wds", "path": tiny_data["id"], "classnames": other,
         "templates": "simple"}]}))
    return suite


def test_evaluator_scores_with_the_trained_head_and_reproduces_the_zero_shot_model_at_step_0(tiny_data, tmp_path,
                                                                                               init_weights):
    from open_clip_dive.evaluate.runner import TEXT_HEAD, TRAINED_HEAD

    pre = ["--loss", "ce", "--epochs", "1", "--pretrained", init_weights]
    assert main(args_for(tiny_data, tmp_path, "step0", *pre[:-2], "--pretrained", init_weights, "--lr", "0")) == 0
    assert main(args_for(tiny_data, tmp_path, "trained", *pre, "--lr", "3e-3")) == 0
    out = tmp_path / "eval"
    result = run_module("open_clip_dive.evaluate", [
        "--model", TINY_MODEL, "--model-config", tiny_data["config"], "--pretrained", init_weights,
        "--finetuned", f"step0={tmp_path / 'step0' / 'checkpoints' / 'epoch_1.pt'}",
        "--finetuned", f"trained={tmp_path / 'trained' / 'checkpoints' / 'epoch_1.pt'}",
        "--suite", _suite(tmp_path, tiny_data), "--wise-ft", "0,0.5,1", "--no-rsa", "--no-plots", "--no-progress",
        "--device", "cpu", "--workers", "0", "--output-dir", out], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads((out / "results.json").read_text())["runs"]
    pre_id, step0_id = runs["pretrained"]["datasets"]["tiny-id"], runs["step0"]["datasets"]["tiny-id"]
    assert pre_id["head"] == TEXT_HEAD and step0_id["head"] == TRAINED_HEAD
    assert runs["trained"]["datasets"]["tiny-id"]["head"] == TRAINED_HEAD
    assert runs["trained"]["datasets"]["tiny-zs"]["head"] == TEXT_HEAD  # other classes: the text tower's head
    for metric in ("top1", "macro_f1", "top5"):
        assert step0_id[metric] == pre_id[metric], metric
    assert runs["trained"]["classifier_head"] == {"classes": 4}
    assert runs["trained"]["datasets"]["tiny-id"]["top1"] != pre_id["top1"]
    table = (out / "results.md").read_text()
    assert re.search(r"\| trained \| [0-9.]+† \| [0-9.]+ \|", table), table  # the ID cell marked, the zero-shot not
    # the step-0 head's logits are the zero-shot logits (not just the same argmax)
    from open_clip_dive.evaluate.heads import build_zeroshot_head
    from open_clip_dive.evaluate.runner import trained_logits
    from open_clip_dive.losses.classifier import checkpoint_head
    from open_clip_dive.prompts import load_classnames, load_templates

    head = checkpoint_head(str(tmp_path / "step0" / "checkpoints" / "epoch_1.pt"))
    model, _, _ = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=init_weights)
    model.eval()
    zs = build_zeroshot_head(model, open_clip.get_tokenizer(TINY_MODEL), load_classnames(tiny_data["classnames"]),
                             load_templates("simple"))
    feats = torch.nn.functional.normalize(torch.randn(16, TINY_MODEL_CFG["embed_dim"]), dim=-1)
    assert torch.allclose(trained_logits(feats, head.weight, head.bias), model.logit_scale.exp() * feats @ zs, atol=1e-5)


def test_in_training_evaluation_uses_the_losss_head(tiny_data, tmp_path):
    from open_clip_dive.evaluate.runner import TEXT_HEAD, TRAINED_HEAD

    assert main(args_for(tiny_data, tmp_path, "evalrun", "--loss", "ce", "--epochs", "1",
                         "--dive-eval-suite", str(_suite(tmp_path, tiny_data)))) == 0
    scored = json.loads((tmp_path / "evalrun" / "dive_eval" / "epoch_1" / "results.json").read_text())
    datasets = scored["runs"]["epoch_1"]["datasets"]
    assert datasets["tiny-id"]["head"] == TRAINED_HEAD and datasets["tiny-zs"]["head"] == TEXT_HEAD


@pytest.mark.parametrize("extra, message", [
    (["--loss", "ce"], "--loss ce trains a classifier on class labels: give --classnames"),
    (["--loss", "lipsum"], "--loss lipsum trains a classifier on class labels: give --classnames"),
    (["--loss", "car-ft"], "--loss car-ft trains a classifier on class labels: give --classnames"),
])
def test_classifier_losses_without_class_names(tiny_data, tmp_path, capsys, extra, message):
    assert main(args_for(tiny_data, tmp_path, "bad", *extra, "--epochs", "1", classnames=False)) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("open_clip_dive: error: ") and message in line
    assert not (tmp_path / "bad").exists()  # stopped before anything was built or logged


def _head_file(path, classes, dim):
    torch.save({"weight": torch.zeros(classes, dim), "bias": torch.zeros(classes),
                "classnames": [f"c{i}" for i in range(classes)]}, path)
    return str(path)


@pytest.mark.parametrize("head, message", [
    ("three", "has 3 classes but --classnames has 4; probe with the same class list"),
    ("narrow", "is for 16-d embeddings but --model embeds in 32 dimensions"),
    ("missing", "does not exist; write one with python -m open_clip_dive.tools.linear_probe"),
    (None, "--loss lp-ft starts from a linear probe: write its head with python -m open_clip_dive.tools.linear_probe"),
])
def test_bad_head_files(tiny_data, tmp_path, capsys, head, message):
    files = {"three": lambda: _head_file(tmp_path / "h3.pt", 3, 32), "narrow": lambda: _head_file(tmp_path / "h16.pt", 4, 16),
             "missing": lambda: str(tmp_path / "none.pt")}
    extra = ["--loss", "lp-ft", "--epochs", "1"] + (["--dive-head-init", files[head]()] if head else [])
    assert main(args_for(tiny_data, tmp_path, "bad", *extra)) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("open_clip_dive: error: ") and message in line
    assert not (tmp_path / "bad").exists()


def test_torchrun_two_processes_train_the_ce_head(tiny_data, tmp_path):
    logs = tmp_path / "logs"
    args = args_for(tiny_data, logs, "ddp", "--loss", "car-ft", "--epochs", "1", "--batch-size", "4")
    args[args.index("--logs"):args.index("--logs") + 2] = ["--dive-logs", str(logs)]  # torchrun swallows --logs
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547"]
    result = run_module("open_clip_dive.main", args, cwd=tmp_path, launcher=launcher, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (logs / "ddp" / "out.log").read_text()
    assert "Running in distributed mode" in log and len(logged(logs / "ddp" / "out.log", "Car_loss")) == 2
    checkpoint = torch.load(logs / "ddp" / "checkpoints" / "epoch_1.pt", weights_only=True)
    assert checkpoint["dive"]["loss_state"]["head.bias"].abs().sum() > 0  # the head trained (it starts at b = 0)


@pytest.mark.parametrize("mode", ["ddp", pytest.param("horovod", marks=pytest.mark.horovod)])
def test_two_ranks_average_the_head_gradient_like_one_rank_with_the_whole_batch(mode, tiny_data, tmp_path):
    import os
    import shutil
    import subprocess

    from helpers import subprocess_env

    if mode == "horovod":
        try:
            import horovod.torch  # noqa: F401
        except ImportError:
            if os.environ.get("DIVE_REQUIRE_HOROVOD"):
                raise
            pytest.skip("horovod is not installed (scripts/build_horovod.sh)")
    shutil.copy(tiny_data["config"], tmp_path / "dive-tiny.json")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dist_equivalence_head.py")
    horovodrun = shutil.which("horovodrun") or os.path.join(os.path.dirname(sys.executable), "horovodrun")
    launch = {"ddp": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29571"],
              "horovod": [horovodrun, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable]}[mode]
    for cmd in ([sys.executable, script, str(tmp_path), "single", "car-ft"], launch + [script, str(tmp_path), mode, "car-ft"]):
        result = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    single = torch.load(tmp_path / "single_rank0.pt")
    for rank in (0, 1):
        records = torch.load(tmp_path / f"{mode}_rank{rank}.pt")
        for step, (one, r) in enumerate(zip(single, records)):
            assert "dive_loss_params.head_weight" in one["grads"]
            for name, grad in one["grads"].items():
                assert (r["grads"][name] - grad).abs().max() <= 1e-4 * grad.abs().max() + 1e-8, (step, name)
            assert torch.allclose(r["head"], one["head"], atol=1e-5), step
    assert not torch.allclose(single[-1]["head"], single[0]["head"])
