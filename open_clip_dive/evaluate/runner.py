"""Evaluate one model on a suite: image features -> zero-shot logits -> per-dataset metrics and group averages.

Every dataset is evaluated on its own: a bad one (missing path, class list that does not fit, empty, unreadable
images) becomes one error line and an `error` entry in the results, and the rest of the suite still runs.
"""

import dataclasses
import logging
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..errors import DiveUsageError
from ..speed import channels_last, cutting_tokenizer, has_channels_last_images, text_padding_id
from .datasets import PreparedDataset, prepare
from .heads import HeadCache, zeroshot_logits
from .metrics import classification_metrics, group_average, project_logits
from .models import autocast_for, unwrap
from .suites import DatasetError, DatasetSpec, SuiteError
from .table import TRAINED_HEAD

log = logging.getLogger("open_clip_dive.evaluate")


@dataclasses.dataclass
class EvalConfig:
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 256
    text_batch_size: int = 256
    workers: int = 0
    progress: bool = True
    default_templates: object = "openai"


def one_line(exc: BaseException) -> str:
    """The message a user needs, on one line (DataLoader workers wrap errors in a traceback text)."""
    text = str(exc).strip()
    if text.startswith("Caught "):  # "Caught X in DataLoader worker process 0.\nOriginal Traceback ...\nX: msg"
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    first = text.splitlines()[0] if text else ""
    return first if isinstance(exc, DiveUsageError) else f"{type(exc).__name__}: {first}"


class SuiteEvaluator:
    """Prepares the suite once (paths, class lists, templates, projections); evaluates any number of models."""

    def __init__(self, specs: Sequence[DatasetSpec], config: EvalConfig):
        self.config = config
        self.specs = list(specs)
        self.prepared: Dict[str, PreparedDataset] = {}
        self.prepare_errors: Dict[str, str] = {}
        for spec in self.specs:
            try:
                self.prepared[spec.name] = prepare(spec, config.default_templates)
            except SuiteError:  # the suite itself is wrong: refuse it before anything is evaluated
                raise
            except Exception as e:  # bad path, class list, template file, ...: this dataset only
                self.prepare_errors[spec.name] = one_line(e)
                log.error(f"ERROR {spec.name} [{spec.group}]: {one_line(e)}")

    def settings(self) -> Dict[str, object]:
        out = {}
        for spec in self.specs:
            if spec.name in self.prepared:
                out[spec.name] = self.prepared[spec.name].describe()
            else:
                out[spec.name] = {"group": spec.group, "path": spec.path, "error": self.prepare_errors[spec.name]}
        return out

    # -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def image_features(self, model, preprocess, ds: PreparedDataset, limit: Optional[int] = None,
                       desc: str = "") -> Tuple[torch.Tensor, torch.Tensor, List[Optional[str]]]:
        autocast = autocast_for(self.config.precision, self.config.device)
        feats, labels, texts = [], [], []
        batches = ds.batches(preprocess, self.config.batch_size, self.config.workers, limit)
        if self.config.progress:
            from tqdm import tqdm

            total = limit if limit is not None else ds.num_samples
            batches = tqdm(batches, desc=desc or ds.name, unit="batch", leave=False,
                           total=-(-total // self.config.batch_size) if total else None)
        # a model trained in pure fp16/bf16 (open_clip --precision pure_*) wants inputs of its own dtype
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        # inputs follow the tower's layout: a copy per batch buys nothing for a contiguous ViT
        layout = channels_last if has_channels_last_images(unwrap(model)) else (lambda x: x)
        for images, y, t in batches:
            with autocast():
                images = layout(images.to(self.config.device, dtype=dtype))
                f = model.encode_image(images)
            feats.append(F.normalize(f.float(), dim=-1).cpu())
            labels.append(y)
            texts.extend(t)
        if not feats:
            raise DatasetError(f"dataset '{ds.name}': no samples were read from '{ds.spec.path}' (empty dataset?)")
        return torch.cat(feats), torch.cat(labels), texts

    def evaluate_dataset(self, model, preprocess, tokenizer, ds: PreparedDataset, heads: HeadCache,
                         label: str, trained=None, alpha: float = 1.0) -> Dict[str, object]:
        start = time.time()
        feats, targets, _ = self.image_features(model, preprocess, ds, desc=f"{label}:{ds.name}")
        if int(targets.max()) >= len(ds.classnames) or int(targets.min()) < 0:
            where = ds.spec.classnames if isinstance(ds.spec.classnames, str) else "classnames.json / the class list"
            raise DatasetError(f"dataset '{ds.name}': labels go up to {int(targets.max())} but the class list ({where}) "
                               f"has {len(ds.classnames)} names; fix the class list or the labels")
        scale = float(model.logit_scale.detach().exp()) if hasattr(model, "logit_scale") else 1.0
        use_trained = trained is not None and list(ds.head_classnames) == list(trained.classnames)
        if use_trained and alpha == 1.0:
            logits = trained_logits(feats, trained.weight, trained.bias)
        else:
            head = heads.get(model, tokenizer, ds.head_classnames, ds.templates, device=self.config.device,
                             batch_size=self.config.text_batch_size,
                             autocast=autocast_for(self.config.precision, self.config.device),
                             progress=self.config.progress).cpu()
            if use_trained:  # WiSE-FT: the head interpolates too, from the zero-shot head at alpha 0
                weight = alpha * trained.weight + (1.0 - alpha) * scale * head.t()
                logits = trained_logits(feats, weight, alpha * trained.bias)
            else:
                logits = zeroshot_logits(feats, head, scale)
        metrics = classification_metrics(project_logits(logits, ds.groups), targets)
        if metrics[ds.spec.primary] is None:  # prepare() refuses top5 of <= 5 classes; never a None score
            raise DatasetError(f"dataset '{ds.name}': no {ds.spec.primary} for {logits.shape[1]} classes")
        metrics.update(group=ds.spec.group, primary=ds.spec.primary, score=metrics[ds.spec.primary],
                       head=TRAINED_HEAD if use_trained else TEXT_HEAD, seconds=round(time.time() - start, 2))
        return metrics

    def evaluate(self, model, preprocess, tokenizer, label: str, trained=None, alpha: float = 1.0) -> Dict[str, object]:
        """{"datasets": {name: metrics | {"error"}}, "summary": {...}} with one log line per dataset.

        `trained`: the checkpoint's own classification head (losses.classifier.TrainedHead): it scores the datasets
        whose head classes are its training classes (ID and its OOD sets), the text-tower head the others; with
        `alpha` < 1 it is interpolated with the zero-shot head as WiSE-FT does. Each dataset's `head` says which."""
        model = unwrap(model)
        tokenizer = cutting_tokenizer(tokenizer, text_padding_id(model))
        was_training = model.training
        model.eval()
        heads = HeadCache()
        results: Dict[str, Dict[str, object]] = {}
        try:
            for spec in self.specs:
                if spec.name in self.prepare_errors:
                    results[spec.name] = {"group": spec.group, "error": self.prepare_errors[spec.name]}
                    continue
                try:
                    m = self.evaluate_dataset(model, preprocess, tokenizer, self.prepared[spec.name], heads, label,
                                              trained, alpha)
                except Exception as e:  # one bad dataset must not sink the suite
                    results[spec.name] = {"group": spec.group, "error": one_line(e)}
                    log.error(f"ERROR {label} | {spec.name} [{spec.group}]: {one_line(e)}")
                    log.debug("traceback", exc_info=True)
                    continue
                results[spec.name] = m
                log.info(format_line(label, spec.name, m))
        finally:
            model.train(was_training)
        return {"datasets": results, "summary": summarize(results, self.specs)}

    # -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def rsa_embeddings(self, model, preprocess, tokenizer, source: str, n: int) -> Dict[str, torch.Tensor]:
        """Normalised image and text embeddings of a fixed sample set: the first `n` images of dataset `source`
        (spread evenly over an ImageFolder), and their captions when the shards have `txt`, else `n` distinct
        class prompts (template-major round robin over the classes)."""
        model = unwrap(model)
        tokenizer = cutting_tokenizer(tokenizer, text_padding_id(model))
        was_training = model.training
        model.eval()
        try:
            if source not in self.prepared:
                raise DatasetError(f"RSA source '{source}' is not a usable dataset of the suite"
                                   + (f": {self.prepare_errors[source]}" if source in self.prepare_errors else ""))
            ds = self.prepared[source]
            images, labels, texts = self.image_features(model, preprocess, ds, limit=n, desc=f"rsa:{source}")
            kind = "captions"
            if not all(texts):
                texts, kind = rsa_prompts(ds, n), "class prompts"
            autocast = autocast_for(self.config.precision, self.config.device)
            out = []
            for start in range(0, len(texts), self.config.text_batch_size):
                tokens = tokenizer(texts[start:start + self.config.text_batch_size]).to(self.config.device)
                with autocast():
                    out.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
            return {"image": images, "text": torch.cat(out), "texts": texts, "texts_kind": kind}
        finally:
            model.train(was_training)


TEXT_HEAD = "zero-shot text head"


def trained_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A linear head on the normalised image features (WiSE-FT's ClassificationHead(normalize=True))."""
    return F.normalize(features.float(), dim=-1) @ weight.float().t() + bias.float()


def rsa_prompts(ds: PreparedDataset, n: int) -> List[str]:
    prompts, seen = [], set()
    for template in ds.templates:
        for name in ds.classnames:
            p = template(name)
            if p not in seen:
                seen.add(p)
                prompts.append(p)
            if len(prompts) >= n:
                return prompts
    return prompts


def summarize(results: Dict[str, Dict[str, object]], specs: Sequence[DatasetSpec]) -> Dict[str, object]:
    """Unweighted means of the primary metric per group. An average over fewer datasets than the suite has is
    flagged (`<group>_partial`), never silently passed off as the full one."""
    out: Dict[str, object] = {}
    for group, key in (("id", "id"), ("ood", "ood_avg"), ("zeroshot", "zeroshot_avg")):
        members = [s.name for s in specs if s.group == group]
        if not members:
            continue
        scores = [results.get(n, {}).get("score") for n in members]
        out[key] = group_average(scores)
        done = sum(s is not None for s in scores)
        out[f"{group}_count"] = done
        out[f"{group}_total"] = len(members)
        out[f"{group}_partial"] = done < len(members)
    return out


def format_line(label: str, name: str, m: Dict[str, object]) -> str:
    parts = [f"top1 {100 * m['top1']:.2f}"]
    if m.get("top5") is not None:
        parts.append(f"top5 {100 * m['top5']:.2f}")
    parts.append(f"macro-F1 {100 * m['macro_f1']:.2f}")
    head = f", {m['head']}" if m.get("head") == TRAINED_HEAD else ""
    return f"{label} | {name} [{m['group']}]: {'  '.join(parts)}  ({m['n']} images, {m['seconds']:.1f} s{head})"
