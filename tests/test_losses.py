import argparse

import pytest
import torch

from open_clip_dive.params import plugin_defaults

from open_clip_dive.errors import DiveUsageError
from open_clip_dive.losses import (DiVELoss, create_loss, is_loss, list_losses, loss_entrypoint,
                                   avl_loss, pvl_loss, register_loss, contrastive_loss)
from open_clip_dive.losses.baselines import ReplayLoss, SnDLoss


def test_avl_and_pvl_against_hand_computed_values():
    u = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    v = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    m = torch.tensor([1.0, 1.0])
    # ||u-m||^2: (0+1), (1+1) ; ||v-m||^2: (1+0), (0+0) -> mean over j of sums: ((1+1) + (2+0)) / 2 = 2
    assert avl_loss(u, v, m).item() == pytest.approx(2.0)
    # ||u-v||^2: (1+1), (1+1) -> mean 2
    assert pvl_loss(u, v).item() == pytest.approx(2.0)
    assert avl_loss(u, u, torch.zeros(2)).item() == pytest.approx((1 + 4) * 2 / 2)


def args_for(**kw):
    base = dict(local_loss=False, gather_with_grad=False, rank=0, world_size=1, horovod=False, siglip=False,
                dive_avl_weight=1000.0, dive_pvl_weight=1000.0, dive_ema_momentum=0.99, dive_replay_weight=1.0,
                distill=False, model="ViT-B-32", loss="dive")
    base.update(kw)
    return argparse.Namespace(**{**plugin_defaults(), **base})


def features(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)


def dive_inputs(seed=0, n=6, d=8, shift=0.05):
    img, txt = features(n, d, seed), features(n, d, seed + 1)
    ref0_i, ref0_t = features(n, d, seed + 2), features(n, d, seed + 3)
    ref_i = ref0_i + shift * features(n, d, seed + 4)
    ref_t = ref0_t + shift * features(n, d, seed + 5)
    return dict(image_features=img, text_features=txt, logit_scale=torch.tensor(10.0), ref_image_features=ref_i,
                ref_text_features=ref_t, ref0_image_features=ref0_i, ref0_text_features=ref0_t)


def test_dive_terms_are_zero_when_model_equals_frozen_copy():
    inputs = dive_inputs(shift=0.0)
    losses = DiVELoss(contrastive_loss(args_for()))(**inputs, output_dict=True)
    assert set(losses) == {"contrastive_loss", "avl_loss", "pvl_loss"}
    assert losses["avl_loss"].item() == 0.0 and losses["pvl_loss"].item() == 0.0
    assert losses["contrastive_loss"].item() > 0


def test_dive_weights_and_names():
    inputs = dive_inputs()
    loss = DiVELoss(contrastive_loss(args_for()), avl_weight=3.0, pvl_weight=5.0)
    out = loss(**inputs, output_dict=True)
    u = inputs["ref_image_features"] - inputs["ref0_image_features"]
    v = inputs["ref_text_features"] - inputs["ref0_text_features"]
    assert out["avl_loss"].item() == pytest.approx(3.0 * avl_loss(u, v, torch.zeros(8)).item(), rel=1e-6)
    assert out["pvl_loss"].item() == pytest.approx(5.0 * pvl_loss(u, v).item(), rel=1e-6)
    # unknown keys (logit_bias=None, dist_*, labels) are ignored
    loss(**inputs, output_dict=True, labels=None, dist_image_features=None)


def test_ema_follows_the_recurrence_and_uses_the_value_from_before_the_step():
    loss = DiVELoss(contrastive_loss(args_for()), avl_weight=1.0, pvl_weight=1.0, momentum=0.9)
    m = torch.zeros(8)
    for step in range(5):
        inputs = dive_inputs(seed=10 * step)
        u = inputs["ref_image_features"] - inputs["ref0_image_features"]
        v = inputs["ref_text_features"] - inputs["ref0_text_features"]
        out = loss(**inputs, output_dict=True)
        assert out["avl_loss"].item() == pytest.approx(avl_loss(u, v, m).item(), rel=1e-5)  # m before the step
        loss.on_optimizer_step()
        m = 0.9 * m + 0.1 * torch.cat([u, v]).mean(0)
        assert torch.allclose(loss.average.ema, m, atol=1e-7)
    assert loss.average.num_updates.item() == 5
    assert loss.average.ema.norm() > 0


def test_ema_does_not_move_in_eval_mode_and_gradients_do_not_reach_it():
    loss = DiVELoss(contrastive_loss(args_for()), avl_weight=1.0, pvl_weight=0.0, momentum=0.5)
    loss.average.ema = torch.full((8,), 0.1)
    inputs = dive_inputs()
    for key in ("ref_image_features", "ref_text_features"):
        inputs[key] = inputs[key].clone().requires_grad_(True)
    loss(**inputs, output_dict=True)["avl_loss"].backward()
    assert not loss.average.ema.requires_grad and loss.average.ema.grad is None
    assert inputs["ref_image_features"].grad is not None
    loss.on_optimizer_step()
    u = inputs["ref_image_features"] - inputs["ref0_image_features"]
    v = inputs["ref_text_features"] - inputs["ref0_text_features"]
    expected = 0.5 * 0.1 + 0.5 * torch.cat([u, v]).detach().mean(0)
    assert torch.allclose(loss.average.ema, expected, atol=1e-7)
    loss.eval()  # evaluation batches do not move m
    loss(**inputs, output_dict=True)
    loss.on_optimizer_step()
    assert torch.allclose(loss.average.ema, expected, atol=1e-7)


def test_ema_state_round_trips_through_state_dict():
    loss = DiVELoss(contrastive_loss(args_for()), momentum=0.9)
    loss(**dive_inputs(), output_dict=True)
    loss.on_optimizer_step()
    fresh = DiVELoss(contrastive_loss(args_for()), momentum=0.9)
    fresh.load_state_dict(loss.state_dict())
    assert torch.equal(fresh.average.ema, loss.average.ema)
    assert fresh.average.num_updates.item() == 1


def test_snd_and_replay():
    inputs = dive_inputs()
    snd = SnDLoss(contrastive_loss(args_for()), weight=2.0)(**inputs, output_dict=True)
    u = inputs["ref_image_features"] - inputs["ref0_image_features"]
    assert snd["snd_loss"].item() == pytest.approx(2.0 * u.pow(2).sum(-1).mean().item(), rel=1e-6)
    replay = ReplayLoss(contrastive_loss(args_for()), weight=0.5)(**inputs, output_dict=True)
    clip = contrastive_loss(args_for())(inputs["ref_image_features"], inputs["ref_text_features"],
                                        inputs["logit_scale"])
    assert replay["replay_loss"].item() == pytest.approx(0.5 * clip.item(), rel=1e-6)


def test_registry_lists_builds_and_explains_unknown_names():
    assert {"clip", "flyp", "dive", "avl", "pvl", "snd", "replay"} <= set(list_losses())
    assert list_losses("dive*") == ["dive"]
    assert is_loss("dive") and not is_loss("dvie")
    assert isinstance(create_loss(args_for(loss="dive")), DiVELoss)
    avl_only = create_loss(args_for(loss="avl"))
    assert avl_only.pvl_weight == 0 and avl_only.average is not None
    pvl_only = create_loss(args_for(loss="pvl"))
    assert pvl_only.average is None
    with pytest.raises(DiveUsageError, match=r"unknown loss 'dvie'.*Did you mean dive"):
        loss_entrypoint("dvie")


def test_third_party_loss_by_import_path_and_duplicate_registration():
    loss = create_loss(args_for(loss="tests_thirdparty_loss:make_loss"))
    assert loss.__class__.__name__ == "ThirdPartyLoss"
    with pytest.raises(DiveUsageError, match="cannot import"):
        loss_entrypoint("no_such_pkg.mod:factory")
    with pytest.raises(ValueError, match="already registered"):
        register_loss("dive")(lambda args: None)


def test_batchnorm_stays_in_eval_mode_when_asked():
    from open_clip_dive.determinism import set_train_mode

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.1))
    set_train_mode(model, bn_eval=True)
    assert model.training and model[2].training and not model[1].training
    before = model[1].running_mean.clone()
    model(torch.randn(2, 3, 8, 8))
    assert torch.equal(model[1].running_mean, before)  # pre-trained statistics untouched
    set_train_mode(model, bn_eval=False)
    assert model[1].training
