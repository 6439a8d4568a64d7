"""RSA variants, difference-vector statistics and WiSE-FT interpolation."""

import numpy as np
import open_clip
import pytest
import torch

from open_clip_dive.errors import DiveUsageError
from open_clip_dive.evaluate.geometry import difference_stats, geometry_report, rsa, spearman
from open_clip_dive.evaluate.wiseft import interpolate_state_dicts, parse_alphas, snapshot

from helpers import TINY_MODEL, write_tiny_model_config


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def emb():
    return unit(np.random.default_rng(0).normal(size=(60, 16)))


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=300), rng.normal(size=300)
    b[:10] = b[0]  # ties
    assert spearman(a, b + a) == pytest.approx(spearmanr(a, b + a).statistic, abs=1e-12)


def test_rsa_of_a_model_against_itself_is_one(emb):
    assert rsa(emb, emb) == pytest.approx(1.0, abs=1e-12)
    assert rsa(emb, emb, centered=True) == pytest.approx(1.0, abs=1e-12)


def test_pure_translation_keeps_centred_rsa_at_one_but_not_cosine_rsa(emb):
    """cos(x + c, y + c) != cos(x, y): the paper's cosine RSA drops under a translation, the centred one does not."""
    c = np.full(16, 0.5)  # |c| = 2: a large common shift
    moved = emb + c
    assert rsa(emb, moved, centered=True) == pytest.approx(1.0, abs=1e-12)
    assert rsa(emb, moved) < 0.95
    small = emb + 0.05 * c / np.linalg.norm(c)  # a small shift barely moves the cosine RSA
    assert 0.95 < rsa(emb, small) < 1.0
    stats = difference_stats(emb, moved)
    assert stats["spread_ratio"] == pytest.approx(0.0, abs=1e-12)
    assert stats["mean_norm"] == pytest.approx(2.0) and stats["norm_mean"] == pytest.approx(2.0)


def test_rotation_keeps_cosine_rsa_at_one(emb):
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(16, 16)))
    assert rsa(emb, emb @ q) == pytest.approx(1.0, abs=1e-12)
    assert difference_stats(emb, emb @ q)["spread_ratio"] > 0.5  # not a translation at all


def test_random_perturbation_lowers_rsa_monotonically(emb):
    rng = np.random.default_rng(3)
    noise = rng.normal(size=emb.shape)
    values = [rsa(emb, unit(emb + s * noise)) for s in (0.05, 0.2, 1.0)]
    assert 1.0 > values[0] > values[1] > values[2] > -1.0
    centred = [rsa(emb, unit(emb + s * noise), centered=True) for s in (0.05, 0.2, 1.0)]
    assert 1.0 > centred[0] > centred[1] > centred[2]


def test_joint_rsa_needs_one_shared_translation(emb):
    img, txt = emb[:30], emb[30:]
    c = np.linspace(-0.4, 0.4, 16)
    same = geometry_report(img, img + c, txt, txt + c)
    assert same["joint"]["rsa_centered"] == pytest.approx(1.0, abs=1e-12)
    assert same["image"]["rsa_centered"] == pytest.approx(1.0, abs=1e-12)
    assert same["joint"]["diff_spread_ratio"] == pytest.approx(0.0, abs=1e-12)
    split = geometry_report(img, img + c, txt, txt - c)  # each modality shifted its own way
    assert split["image"]["rsa_centered"] == pytest.approx(1.0, abs=1e-12)
    assert split["text"]["rsa_centered"] == pytest.approx(1.0, abs=1e-12)
    assert split["joint"]["rsa_centered"] < 0.99 and split["joint"]["diff_spread_ratio"] > 0.9


def test_rsa_needs_matching_samples(emb):
    with pytest.raises(ValueError, match="same >= 3 samples"):
        rsa(emb, emb[:10])


# ------------------------------------------------------------------------------------------------ WiSE-FT
def test_parse_alphas():
    assert parse_alphas("0:1:0.1") == [round(0.1 * i, 10) for i in range(11)]
    assert parse_alphas("1,0,0.5,0.5") == [0.0, 0.5, 1.0]
    for bad in ("0:1:0", "a,b", "0,1.5"):
        with pytest.raises(DiveUsageError, match="--wise-ft"):
            parse_alphas(bad)


@pytest.fixture(scope="module")
def two_tiny_models(tmp_path_factory):
    open_clip.add_model_config(write_tiny_model_config(str(tmp_path_factory.mktemp("cfg"))))
    torch.manual_seed(0)
    pre = open_clip.create_model(TINY_MODEL).eval()
    torch.manual_seed(1)
    ft = open_clip.create_model(TINY_MODEL).eval()
    return pre, ft


def outputs(model):
    torch.manual_seed(5)
    images = torch.randn(3, 3, 32, 32)
    tokens = torch.randint(1, 1000, (3, 32))
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens), model.logit_scale.detach().clone()


def test_wise_ft_end_points_reproduce_both_models_exactly(two_tiny_models):
    pre, ft = two_tiny_models
    sd_pre, sd_ft = snapshot(pre), snapshot(ft)
    work = open_clip.create_model(TINY_MODEL).eval()
    for alpha, reference in ((0.0, pre), (1.0, ft)):
        work.load_state_dict(interpolate_state_dicts(sd_pre, sd_ft, alpha))
        for got, want in zip(outputs(work), outputs(reference)):
            assert torch.equal(got, want)
    work.load_state_dict(interpolate_state_dicts(sd_pre, sd_ft, 0.5))
    mid = snapshot(work)
    key = "visual.conv1.weight"
    torch.testing.assert_close(mid[key], (sd_pre[key] + sd_ft[key]) / 2)
    assert not torch.equal(outputs(work)[0], outputs(pre)[0]) and not torch.equal(outputs(work)[0], outputs(ft)[0])


def test_wise_ft_refuses_two_architectures(two_tiny_models):
    pre, _ = two_tiny_models
    sd = snapshot(pre)
    other = dict(sd)
    other["visual.conv1.weight"] = torch.zeros(5, 3, 8, 8)
    with pytest.raises(DiveUsageError, match="visual.conv1.weight"):
        interpolate_state_dicts(sd, other, 0.5)
    with pytest.raises(DiveUsageError, match="one architecture"):
        interpolate_state_dicts(sd, {k: v for k, v in sd.items() if k != "logit_scale"}, 0.5)
