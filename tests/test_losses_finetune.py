"""The classification-head losses (ce, lp-ft, lipsum, car-ft) and the cosine constraint: value and gradient against
formulas written out here, the zero-shot head, the glue's handling of loss-owned parameters, accumulation."""

import argparse
import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F

from helpers import COLOURS, TINY_MODEL_CFG
from open_clip_dive.evaluate.heads import build_zeroshot_head
from open_clip_dive.loss_setup import ATTR, prepare_loss
from open_clip_dive.losses import (ClassifierHead, CosineLoss, CrossEntropyLoss, CARFTLoss, LipsumLoss, contrastive_loss,
                                   describe_loss, find_head, list_losses)
from open_clip_dive.prompts import load_templates
from open_clip_dive.reference import frozen_copy
from open_clip_dive.train import TrainingStep

B, D, C, M = 6, 8, 5, 7
NAMES = COLOURS[:C]


def unit(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1).float()


def leaf(x):
    return x.clone().requires_grad_(True)


def with_head(loss, seed=0, scale=10.0):
    g = torch.Generator().manual_seed(seed)
    loss.head = ClassifierHead(torch.randn(C, D, generator=g), torch.randn(C, generator=g), NAMES)
    loss.scale = scale
    return loss


def grads(value, *tensors):
    return torch.autograd.grad(value, tensors)


def test_ce_value_and_gradient_match_the_written_out_formula():
    loss = with_head(CrossEntropyLoss(NAMES, []))
    f = leaf(unit(B, D, seed=1))
    labels = torch.tensor([0, 3, 1, 4, 4, 2])
    out = loss(image_features=f, labels=labels, output_dict=True, text_features=None)
    assert set(out) == {"ce_loss"}
    W, b = loss.head.weight, loss.head.bias
    # by hand: logits_ic = sum_d W_cd f_id + b_c; ce = mean_i (log sum_c exp logits_ic - logits_i,y_i)
    logits = (W[None, :, :] * f[:, None, :]).sum(-1) + b
    p = logits.exp() / logits.exp().sum(-1, keepdim=True)
    expected = (logits.exp().sum(-1).log() - logits[torch.arange(B), labels]).mean()
    assert out["ce_loss"].item() == pytest.approx(expected.item(), abs=1e-5)
    g_f, g_w, g_b = grads(out["ce_loss"], f, W, b)
    onehot = F.one_hot(labels, C).float()
    dlogits = ((p - onehot) / B).detach()  # d ce / d logits
    assert torch.allclose(g_f, dlogits @ W.detach(), atol=1e-5)
    assert torch.allclose(g_w, dlogits.t() @ f.detach(), atol=1e-5)
    assert torch.allclose(g_b, dlogits.sum(0), atol=1e-5)


def test_lipsum_regulariser_value_and_gradient():
    loss = with_head(LipsumLoss(NAMES, [], weight=3.0, num_texts=M), scale=20.0)
    f, f0, t = leaf(unit(B, D, seed=2)), unit(B, D, seed=3), unit(M, D, seed=4)
    fd = f.detach()
    out = loss(image_features=f, labels=torch.zeros(B, dtype=torch.long), id0_image_features=f0,
               id0_text_features=t, output_dict=True)
    # R = w / (2M) * mean_i sum_m (s <f_i, t_m> - s <f0_i, t_m>)^2, by loops
    s, total = 20.0, 0.0
    for i in range(B):
        for m in range(M):
            total += (s * float(fd[i] @ t[m]) - s * float(f0[i] @ t[m])) ** 2
    assert out["lipsum_loss"].item() == pytest.approx(3.0 * total / (2 * M) / B, rel=1e-5)
    (g_f,) = grads(out["lipsum_loss"], f)
    gap = s * (f.detach() - f0) @ t.t()  # [B, M]
    expected = 3.0 / (2 * M) / B * 2 * s * gap @ t
    assert torch.allclose(g_f, expected, atol=1e-5)


def test_lipsum_texts_are_random_tokens_fresh_every_step_and_reproducible():
    loss = LipsumLoss(NAMES, [], weight=1.0, num_texts=4, num_tokens=5, seed=7)
    loss._tokens = (49406, 49407, 16, None)
    first = loss.frozen_id_texts(None)
    assert first.shape == (4, 16)
    assert (first[:, 0] == 49406).all() and (first[:, 6] == 49407).all() and (first[:, 7:] == 0).all()
    assert ((first[:, 1:6] >= 0) & (first[:, 1:6] < 49406)).all()
    assert torch.equal(first, loss.frozen_id_texts(None))  # every micro-batch of a step: the same texts
    loss.on_optimizer_step()
    assert not torch.equal(first, loss.frozen_id_texts(None))
    again = LipsumLoss(NAMES, [], weight=1.0, num_texts=4, num_tokens=5, seed=7)
    again._tokens = loss._tokens
    again.load_state_dict(loss.state_dict(), strict=False)  # a resumed run draws what the uninterrupted one drew
    assert torch.equal(again.frozen_id_texts(None), loss.frozen_id_texts(None))


def test_lipsum_texts_with_a_hugging_face_tokenizer():
    """The embedded default's text tower is MiniLM (open_clip's HFTokenizer, BERT ids): [CLS] random ordinary
    tokens [SEP], padding after; never a special id (padding inside a text would be masked by the tower)."""
    from open_clip_dive.losses.regularizers import text_token_ids

    class Vocab:  # the attributes of a transformers BERT tokenizer that the loss reads
        cls_token_id, sep_token_id, all_special_ids = 101, 102, [0, 100, 101, 102, 103]

        def __len__(self):
            return 120

    hf = argparse.Namespace(tokenizer=Vocab(), context_length=12)
    sot, eot, ordinary = text_token_ids(hf)
    assert (sot, eot) == (101, 102) and len(ordinary) == 115 and not set(ordinary.tolist()) & {0, 100, 101, 102, 103}
    assert text_token_ids(argparse.Namespace()) == (None, None, None)
    loss = LipsumLoss(NAMES, [], weight=1.0, num_texts=50, num_tokens=6, seed=3)
    loss._tokens = (sot, eot, 12, ordinary)
    texts = loss.frozen_id_texts(None)
    assert (texts[:, 0] == 101).all() and (texts[:, 7] == 102).all() and (texts[:, 8:] == 0).all()
    body = texts[:, 1:7]
    assert not torch.isin(body, torch.tensor([0, 100, 101, 102, 103])).any() and body.max() < 120
    assert len(body.unique()) > 50  # drawn over the vocabulary, not a constant


def test_car_ft_regulariser_value_and_gradient():
    loss = with_head(CARFTLoss(NAMES, [], weight=2.0), scale=15.0)
    loss.contexts = unit(M, D, seed=5)
    f, f0 = leaf(unit(B, D, seed=6)), unit(B, D, seed=7)
    out = loss(image_features=f, labels=torch.zeros(B, dtype=torch.long), id0_image_features=f0, output_dict=True)
    w, s = loss.contexts, 15.0

    def softmax(z):
        e = [pow(2.718281828459045, v - max(z)) for v in z]
        return [v / sum(e) for v in e]

    kl = 0.0  # KL(p_pre || p_ft) = sum_t p_pre,t (log p_pre,t - log p_ft,t), averaged over the batch
    import math
    fd = f.detach()
    for i in range(B):
        p = softmax([s * float(fd[i] @ w[t]) for t in range(M)])
        p0 = softmax([s * float(f0[i] @ w[t]) for t in range(M)])
        kl += sum(a * (math.log(a) - math.log(b)) for a, b in zip(p0, p))
    assert out["car_loss"].item() == pytest.approx(2.0 * kl / B, rel=1e-5)
    (g_f,) = grads(out["car_loss"], f)
    p_ft, p_pre = F.softmax(s * f.detach() @ w.t(), -1), F.softmax(s * f0 @ w.t(), -1)
    assert torch.allclose(g_f, 2.0 * s * (p_ft - p_pre) @ w / B, atol=1e-5)


def test_cosine_constraint_value_and_gradient():
    args = argparse.Namespace(local_loss=False, gather_with_grad=False, rank=0, world_size=1, horovod=False, siglip=False)
    loss = CosineLoss(contrastive_loss(args), weight=4.0)
    u0, v0 = unit(B, D, seed=8), unit(B, D, seed=9)
    u, v = leaf(F.normalize(u0 + 0.2 * unit(B, D, seed=10), dim=-1)), leaf(F.normalize(v0 + 0.2 * unit(B, D, seed=11), dim=-1))
    out = loss(image_features=unit(B, D, seed=12), text_features=unit(B, D, seed=13), logit_scale=torch.tensor(10.0),
               ref_image_features=u, ref_text_features=v, ref0_image_features=u0, ref0_text_features=v0,
               output_dict=True)
    assert set(out) == {"contrastive_loss", "cosine_loss"}
    total = 0.0
    ud, vd = u.detach(), v.detach()
    for a, b, a0, b0 in ((ud, ud, u0, u0), (vd, vd, v0, v0), (ud, vd, u0, v0)):
        total += sum((float(a[j] @ b[k]) - float(a0[j] @ b0[k])) ** 2 for j in range(B) for k in range(B)) / B ** 2
    assert out["cosine_loss"].item() == pytest.approx(4.0 * total, rel=1e-5)
    g_u, g_v = grads(out["cosine_loss"], u, v)
    e_uu, e_vv, e_uv = ud @ ud.t() - u0 @ u0.t(), vd @ vd.t() - v0 @ v0.t(), ud @ vd.t() - u0 @ v0.t()
    assert torch.allclose(g_u, 4.0 * (4 * e_uu @ ud + 2 * e_uv @ vd) / B ** 2, atol=1e-5)
    assert torch.allclose(g_v, 4.0 * (4 * e_vv @ vd + 2 * e_uv.t() @ ud) / B ** 2, atol=1e-5)
    same = loss(image_features=u0, text_features=v0, logit_scale=torch.tensor(10.0), ref_image_features=u0,
                ref_text_features=v0, ref0_image_features=u0, ref0_text_features=v0, output_dict=True)
    assert same["cosine_loss"].item() == 0.0


@pytest.fixture(autouse=True)
def _tiny_config(tiny_data):
    open_clip.add_model_config(tiny_data["config"])  # the tokenizer of dive-tiny (context length 32)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return open_clip.model.CLIP(**TINY_MODEL_CFG, output_dict=True)


def loss_args(**kw):
    base = dict(model="dive-tiny", cache_dir=None, force_context_length=None, classnames=None, templates="simple",
                dive_head_init=None, seed=0, dive_lipsum_weight=1.0, dive_lipsum_texts=6, dive_lipsum_tokens=4,
                dive_car_weight=1.0, device="cpu", precision="fp32", distill=False, horovod=False,
                grad_clip_norm=None, rank=0, world_size=1)
    base.update(kw)
    return argparse.Namespace(**base)


def test_ce_head_starts_as_the_evaluators_zero_shot_head_and_stays_out_of_the_state_dict():
    model = tiny_model()
    templates = load_templates("simple")
    loss = CrossEntropyLoss(NAMES, templates)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert prepare_loss(loss, model, loss_args()) == 2
    tokenizer = open_clip.get_tokenizer("dive-tiny")
    zs = build_zeroshot_head(model, tokenizer, NAMES, templates)  # [D, C]
    assert torch.allclose(loss.head.weight, model.logit_scale.exp() * zs.t(), atol=1e-6)
    assert torch.equal(loss.head.bias, torch.zeros(C))
    assert loss.head.weight.is_contiguous()  # Horovod's allreduce rejects non-contiguous gradients
    # only the image tower and the head train; the model's state_dict is open_clip's, and loads back strictly
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if n.startswith("visual.")} | {f"{ATTR}.head_weight", f"{ATTR}.head_bias"}
    assert f"{ATTR}.head_weight" in trainable and not model.logit_scale.requires_grad
    assert set(model.state_dict()) == set(before)
    model.load_state_dict(before)
    fresh = tiny_model()
    fresh.load_state_dict(model.state_dict())
    # open_clip's weight-decay rule (main.py) puts the head's weight in the decayed group, its bias in the other
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    no_decay = {n for n, p in model.named_parameters() if exclude(n, p) and p.requires_grad}
    assert f"{ATTR}.head_bias" in no_decay and f"{ATTR}.head_weight" not in no_decay
    head = find_head(loss.state_dict())
    assert head.classnames == NAMES and torch.equal(head.weight, loss.head.weight.detach())


def labelled_batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, 32, 32, generator=g), "text": torch.randint(1, 1000, (n, 32), generator=g),
            "label": torch.randint(0, C, (n,), generator=g)}


def split(b, parts):
    n = b["image"].shape[0] // parts
    return [{k: v[i * n:(i + 1) * n] for k, v in b.items()} for i in range(parts)]


@pytest.mark.parametrize("name", ["ce", "lipsum", "car-ft"])
def test_accumulated_classifier_step_matches_one_big_batch(name):
    pretrained = tiny_model()
    start = copy.deepcopy(pretrained)
    with torch.no_grad():  # move the image tower off the frozen copy so the regularisers are not zero
        for p in start.visual.parameters():
            p.add_(0.01 * torch.randn_like(p))
    args = loss_args(loss=name, classnames=None)
    results = []
    for micro in (1, 4):
        model = copy.deepcopy(start)
        loss = {"ce": lambda: CrossEntropyLoss(NAMES, load_templates("simple")),
                "lipsum": lambda: LipsumLoss(NAMES, load_templates("simple"), weight=5.0, num_texts=6, num_tokens=4),
                "car-ft": lambda: CARFTLoss(NAMES, load_templates("simple"), weight=5.0)}[name]()
        frozen = frozen_copy(pretrained)
        prepare_loss(loss, model, args)
        model.train()
        step = TrainingStep(model, loss, args, frozen=frozen)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
        torch.manual_seed(1)
        losses, _ = step([(b, None) for b in split(labelled_batch(8, 3), micro)], optimizer, None)
        results.append(({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, losses))
    (big, big_losses), (acc, _) = results
    assert big.keys() == acc.keys() and f"{ATTR}.head_weight" in big and not any(k.startswith("text") for k in big)
    for key, grad in big.items():
        assert (acc[key] - grad).abs().max() <= 1e-4 * grad.abs().max() + 1e-8, key
    if name != "ce":
        assert big_losses[{"lipsum": "lipsum_loss", "car-ft": "car_loss"}[name]].item() > 0


def test_every_loss_has_a_description():
    for name in list_losses():
        assert describe_loss(name), name
    assert {"ce", "lp-ft", "lipsum", "car-ft", "cosine"} <= set(list_losses())


def test_losses_command_lists_every_loss_with_its_line(capsys):
    from open_clip_dive.losses.__main__ import main

    assert main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(list_losses())
    assert any(line.startswith("lp-ft ") and "linear probe" in line for line in lines)


def test_frozen_copy_of_a_half_precision_model_runs_in_the_precision_asked_for():
    model = tiny_model().to(torch.bfloat16)  # what --precision pure_bf16 builds
    frozen = frozen_copy(model, "fp32")
    images, texts = torch.randn(2, 3, 32, 32), torch.randint(1, 1000, (2, 32))
    image_features, text_features = frozen(images, texts)
    assert image_features.dtype == torch.float32 and text_features.dtype == torch.float32
    assert next(model.parameters()).dtype == torch.bfloat16  # the trainable model is left as it is
