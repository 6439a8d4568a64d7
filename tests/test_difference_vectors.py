"""Difference vectors measure how the weights moved, nothing else: exactly zero while the trainable model equals the
frozen one, whatever dropout, drop-path or patch dropout the towers have; and DiVE's open readings as flags."""

import argparse
import json
import re

import pytest
import torch
from torch import nn

from helpers import TINY_MODEL_CFG, write_tiny_model_config
from open_clip_dive.errors import DiveUsageError
from open_clip_dive.losses import DiVELoss, avl_loss, contrastive_loss, create_loss, pvl_loss
from open_clip_dive.main import main
from open_clip_dive.params import plugin_defaults

pytestmark = pytest.mark.timeout(600)

STOCHASTIC_CONFIGS = {
    "tiny": TINY_MODEL_CFG,
    "tiny-patch-dropout": {**TINY_MODEL_CFG, "vision_cfg": {**TINY_MODEL_CFG["vision_cfg"], "patch_dropout": 0.5}},
    # a timm image tower with drop-path and dropout (timm's test_vit: 4 layers of width 64)
    "tiny-timm-drop-path": {**TINY_MODEL_CFG, "vision_cfg": {"image_size": 32, "timm_model_name": "test_vit",
                                                             "timm_drop_path": 0.5, "timm_drop": 0.3,
                                                             "timm_pool": "token", "timm_proj": "linear"}},
}


def write_config(directory, name, cfg):
    path = directory / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def logged(log: str, term: str):
    return [float(v) for v in re.findall(rf"{term}: ([0-9.e+-]+)", log)]


def dive_argv(tiny_data, tmp_path, name, model, config, *extra):
    return ["--dive-model-config", config, "--model", model, "--train-data", tiny_data["id"],
            "--train-num-samples", "16", "--classnames", tiny_data["classnames"], "--dive-ref-data", tiny_data["ref"],
            "--dive-avl-weight", "1", "--dive-pvl-weight", "1", "--batch-size", "8", "--epochs", "1",
            "--device", "cpu", "--precision", "fp32", "--workers", "0", "--lr", "0", "--warmup", "1",
            "--logs", str(tmp_path), "--name", name, "--report-to", "none", "--log-every-n-steps", "1", *extra]


@pytest.mark.parametrize("model", list(STOCHASTIC_CONFIGS))
def test_difference_vectors_are_zero_while_the_model_equals_the_frozen_one(tiny_data, tmp_path, model):
    config = write_config(tmp_path, model, STOCHASTIC_CONFIGS[model])
    assert main(dive_argv(tiny_data, tmp_path, "zero", model, config)) == 0
    log = (tmp_path / "zero" / "out.log").read_text()
    avl, pvl = logged(log, "Avl_loss"), logged(log, "Pvl_loss")
    assert len(avl) == len(pvl) == 2  # step 0, and a step with learning rate 0
    assert max(avl + pvl) < 1e-10, (avl, pvl)
    ema = torch.load(tmp_path / "zero" / "checkpoints" / "epoch_1.pt", weights_only=True)["dive"]["ema"]
    assert ema.norm() < 1e-6  # the EMA of zero difference vectors stays at zero


@pytest.mark.parametrize("model", ["tiny-patch-dropout", "tiny-timm-drop-path"])
def test_without_the_switch_train_mode_noise_shows_in_the_difference_vectors(tiny_data, tmp_path, model):
    """The control: the same runs with --no-dive-deterministic are far from zero (the confound this fixes)."""
    config = write_config(tmp_path, model, STOCHASTIC_CONFIGS[model])
    assert main(dive_argv(tiny_data, tmp_path, "noisy", model, config, "--no-dive-deterministic")) == 0
    avl = logged((tmp_path / "noisy" / "out.log").read_text(), "Avl_loss")
    assert min(avl) > 1e-4


class AlwaysDropout(nn.Module):
    def forward(self, x):
        return nn.functional.dropout(x, 0.5, training=True)  # ignores eval mode


def test_a_layer_random_in_eval_mode_is_refused_by_name(tmp_path):
    import open_clip

    from open_clip_dive.determinism import check_deterministic

    open_clip.add_model_config(write_tiny_model_config(str(tmp_path)))
    model = open_clip.create_model("dive-tiny")
    check_deterministic(model, bn_eval=True)  # the plain tiny model passes
    model.visual.ln_post = nn.Sequential(model.visual.ln_post, AlwaysDropout())
    before = torch.random.get_rng_state()
    with pytest.raises(DiveUsageError, match=r"--dive-deterministic: module 'visual\.ln_post\.1' \(AlwaysDropout\) is "
                                             r"random even in eval mode.*--no-dive-deterministic"):
        check_deterministic(model, bn_eval=True)
    assert torch.equal(torch.random.get_rng_state(), before)  # the probe leaves the run's RNG alone
    assert model.training  # and the model's mode


def test_the_step_logs_what_the_regulariser_sees(tiny_data, tmp_path):
    assert main(dive_argv(tiny_data, tmp_path, "stats", "dive-tiny", tiny_data["config"], "--lr", "1e-2")) == 0
    log = (tmp_path / "stats" / "out.log").read_text()
    for key in ("dive/u_norm", "dive/v_norm", "dive/u_common", "dive/v_common", "dive/ema_norm"):
        assert len(logged(log, key)) == 2, key
    assert logged(log, "dive/u_norm")[-1] > 1e-4  # after one step with a learning rate the model has moved


# --- the readings as flags: each changes what it says and nothing else --------------------------------------------
def loss_args(**kw):
    base = dict(local_loss=False, gather_with_grad=False, rank=0, world_size=1, horovod=False, siglip=False,
                distill=False, model="tiny", loss="dive", dive_avl_weight=2.0, dive_pvl_weight=3.0,
                dive_ema_momentum=0.9)
    return argparse.Namespace(**{**plugin_defaults(), **base, **kw})


def loss_inputs(seed=0, n=6, d=8):
    g = torch.Generator().manual_seed(seed)
    unit = lambda: nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)  # noqa: E731
    return dict(image_features=unit(), text_features=unit(), logit_scale=torch.tensor(10.0),
                ref_image_features=unit().requires_grad_(), ref_text_features=unit().requires_grad_(),
                ref0_image_features=unit(), ref0_text_features=unit())


def run_loss(loss, inputs, steps=2):
    out = []
    for _ in range(steps):
        losses = loss(**inputs, output_dict=True)
        out.append({k: v.detach().clone() for k, v in losses.items()})
        loss.on_optimizer_step()
    return out


def test_mean_reduction_is_the_sum_over_d():
    inputs = loss_inputs()
    summed, meaned = create_loss(loss_args()), create_loss(loss_args(dive_reduction="mean"))
    a, b = run_loss(summed, inputs), run_loss(meaned, inputs)
    for step_a, step_b in zip(a, b):
        assert torch.equal(step_a["contrastive_loss"], step_b["contrastive_loss"])
        for term in ("avl_loss", "pvl_loss"):
            assert torch.allclose(step_b[term] * 8, step_a[term], rtol=1e-6)
    assert torch.equal(summed.average.ema, meaned.average.ema)  # the EMA does not depend on the reduction


def test_ema_order_after_folds_this_batch_in_first():
    inputs = loss_inputs()
    before, after = create_loss(loss_args()), create_loss(loss_args(dive_ema_order="after"))
    a, b = run_loss(before, inputs), run_loss(after, inputs)
    u = inputs["ref_image_features"].detach() - inputs["ref0_image_features"]
    v = inputs["ref_text_features"].detach() - inputs["ref0_text_features"]
    batch_mean = torch.cat([u, v]).mean(0)
    m1 = 0.1 * batch_mean  # m after the first update (from zero, momentum 0.9)
    assert torch.allclose(a[0]["avl_loss"], 2.0 * avl_loss(u, v, torch.zeros(8)))
    assert torch.allclose(b[0]["avl_loss"], 2.0 * avl_loss(u, v, m1), rtol=1e-6)
    assert torch.allclose(b[1]["avl_loss"], 2.0 * avl_loss(u, v, 0.9 * m1 + 0.1 * batch_mean), rtol=1e-6)
    for step_a, step_b in zip(a, b):
        assert torch.equal(step_a["pvl_loss"], step_b["pvl_loss"]) and torch.equal(
            step_a["contrastive_loss"], step_b["contrastive_loss"])
    assert torch.allclose(before.average.ema, after.average.ema)  # the stored m moves the same either way
    assert torch.allclose(pvl_loss(u, v) * 3.0, a[0]["pvl_loss"])


def test_raw_space_passes_unnormalised_reference_features_and_changes_nothing_else(tiny_data):
    import open_clip

    from open_clip_dive.reference import frozen_copy
    from open_clip_dive.train import TrainingStep

    open_clip.add_model_config(tiny_data["config"])
    torch.manual_seed(0)
    model = open_clip.create_model("dive-tiny", output_dict=True)
    frozen = frozen_copy(model)
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(4, 3, 32, 32, generator=g), "text": torch.randint(1, 999, (4, 32), generator=g)}
    ref = {"image": torch.randn(3, 3, 32, 32, generator=g), "text": torch.randint(1, 999, (3, 32), generator=g)}
    seen = {}

    class Recorder(DiVELoss):
        def forward(self, **inputs):
            seen[self.reference_space] = {k: v.detach() for k, v in inputs.items() if torch.is_tensor(v)}
            return super().forward(**inputs)

    args = argparse.Namespace(device="cpu", precision="fp32", distill=False)
    for space in ("normalized", "raw"):
        loss = Recorder(contrastive_loss(loss_args()), 1.0, 1.0, space=space)
        TrainingStep(model, loss, args, frozen=frozen).forward(batch, ref)
    norm, raw = seen["normalized"], seen["raw"]
    for key in ("image_features", "text_features", "logit_scale"):
        assert torch.equal(norm[key], raw[key])  # the ID part is untouched
    with torch.no_grad():
        assert torch.allclose(raw["ref_image_features"], model.encode_image(ref["image"]), atol=1e-6)
        assert torch.allclose(raw["ref0_text_features"], model.encode_text(ref["text"]), atol=1e-6)
    for key in ("ref_image_features", "ref_text_features", "ref0_image_features", "ref0_text_features"):
        assert raw[key].norm(dim=-1).sub(1).abs().max() > 1e-3  # really raw
        assert torch.allclose(nn.functional.normalize(raw[key], dim=-1), norm[key], atol=1e-6)
    assert not hasattr(model, "__dict__") or "encode_image" not in model.__dict__  # the tap is gone


@pytest.mark.parametrize("extra, message", [
    (["--dive-space", "unit"], "--dive-space: invalid choice: 'unit'"),
    (["--dive-reduction", "avg"], "--dive-reduction: invalid choice: 'avg'"),
    (["--dive-ema-order", "later"], "--dive-ema-order: invalid choice: 'later'"),
])
def test_unknown_reading_is_one_line(tiny_data, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(dive_argv(tiny_data, tmp_path, "bad", "dive-tiny", tiny_data["config"], *extra))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_raw_space_with_the_cache_is_refused(tiny_data, tmp_path, capsys):
    code = main(dive_argv(tiny_data, tmp_path, "bad", "dive-tiny", tiny_data["config"], "--dive-space", "raw",
                          "--dive-ref-cache", str(tmp_path)))
    assert code == 2
    assert "--dive-space raw: the reference cache holds normalised embeddings" in capsys.readouterr().err


def test_eval_mode_warns_where_it_turns_gradient_checkpointing_off():
    """Hugging Face layers checkpoint only in train mode: --grad-checkpointing would silently stop saving memory."""
    from open_clip_dive.determinism import eval_mode_costs

    class HFStyleLayer(nn.Linear):
        gradient_checkpointing = False  # the class attribute transformers' GradientCheckpointingLayer declares

    model = nn.Sequential(nn.Linear(2, 2), HFStyleLayer(2, 2))
    assert eval_mode_costs(nn.Sequential(nn.Linear(2, 2)), grad_checkpointing=True) == []
    assert eval_mode_costs(model, grad_checkpointing=False) == []
    (warning,) = eval_mode_costs(model, grad_checkpointing=True)
    assert "HFStyleLayer" in warning and "--grad-checkpointing has no effect" in warning
