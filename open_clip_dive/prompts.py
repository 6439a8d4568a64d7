"""Class names and prompt templates: built-in ImageNet ones (shipped by open_clip) or JSON/text files."""

import hashlib
import json
import logging
import os
from typing import Callable, List, Sequence

from open_clip import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from .errors import DiveUsageError

Template = Callable[[str], str]

BUILTIN_CLASSNAMES = {"imagenet": list(IMAGENET_CLASSNAMES)}
BUILTIN_TEMPLATES = {
    "openai": list(OPENAI_IMAGENET_TEMPLATES),  # the 80 OpenAI ImageNet templates (FLYP's default)
    "simple": list(SIMPLE_IMAGENET_TEMPLATES),
    "photo": [lambda c: f"a photo of a {c}."],
}


def _read_list_file(path: str, what: str, flag: str) -> list:
    """The entries of a JSON list, a JSON {index: entry} dict (indices 0..n-1, no gaps), or a text file with one
    entry per line. Every entry must be a string that is not blank (a blank or nested entry would silently shift
    or garble the entries after it)."""
    if not os.path.isfile(path):
        raise DiveUsageError(f"{flag}: {what} file '{path}' does not exist; give a JSON list or a text file with one entry per line")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not path.endswith(".json"):
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                raise DiveUsageError(f"{flag}: line {number} of '{path}' is blank; every line is one {what} entry "
                                     "(a blank line would shift the entries after it)")
        return [line.strip() for line in lines]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DiveUsageError(f"{flag}: '{path}' is not valid JSON ({e})") from None
    if isinstance(data, dict):
        # {"0": "tench", "1": "goldfish", ...} or {"classnames": [...]} / {"templates": [...]}
        for key in ("classnames", "templates"):
            if key in data:
                data = data[key]
                break
        else:
            data = _indexed(data, path, flag)
    if not isinstance(data, list):
        raise DiveUsageError(f"{flag}: '{path}' must hold a JSON list of strings")
    for index, entry in enumerate(data):
        if not isinstance(entry, str) or not entry.strip():
            raise DiveUsageError(f"{flag}: entry {index} of '{path}' is {json.dumps(entry)[:60]}; every {what} entry "
                                 "must be a non-blank string")
    return [entry.strip() for entry in data]


def _indexed(data: dict, path: str, flag: str) -> list:
    """{index: name} with the indices 0..n-1: a gap would renumber every later class."""
    try:
        indices = {int(k): v for k, v in data.items()}
    except ValueError:
        raise DiveUsageError(f"{flag}: '{path}' must be a JSON list, or a dict keyed by class index") from None
    missing = sorted(set(range(len(data))) - set(indices))
    if len(indices) != len(data) or missing:
        hint = "an index appears twice" if len(indices) != len(data) else f"index {missing[0]} is missing"
        raise DiveUsageError(f"{flag}: the keys of '{path}' must be the class indices 0..{len(data) - 1}, but {hint} "
                             "(labels index the names directly, so a gap would prompt a class with another's name)")
    return [indices[i] for i in range(len(data))]


def load_classnames(spec: str, flag: str = "--classnames") -> List[str]:
    """`imagenet` (open_clip's 1000 OpenAI names) or a file (JSON list / index dict / one name per line)."""
    if spec in BUILTIN_CLASSNAMES:
        return list(BUILTIN_CLASSNAMES[spec])
    names = _read_list_file(spec, "class-name", flag)
    if not names:
        raise DiveUsageError(f"{flag}: '{spec}' holds no class names")
    return names


def warn_duplicates(names: Sequence[str], spec: str, flag: str = "--classnames"):
    """Two classes with one name get one prompt: legal, but usually a mistake."""
    seen = {}
    for index, name in enumerate(names):
        seen.setdefault(name.lower(), []).append(index)
    dups = {name: where for name, where in seen.items() if len(where) > 1}
    if dups:
        listed = "; ".join(f"'{name}' at {where}" for name, where in list(dups.items())[:5])
        logging.warning(f"{flag} {spec}: {len(dups)} class name(s) appear more than once ({listed}); their classes "
                        "get the same prompts and cannot be told apart")


def _format_template(template: str) -> Template:
    if "{c}" in template:
        return lambda c: template.replace("{c}", c)
    if "{}" in template:
        return lambda c: template.replace("{}", c)
    raise DiveUsageError(f"template {template!r} has no '{{}}' or '{{c}}' placeholder for the class name")


def load_templates(spec: str, flag: str = "--templates") -> List[Template]:
    """`openai` (80), `simple` (7), `photo` (1) or a file of strings with a `{}` / `{c}` placeholder."""
    if spec in BUILTIN_TEMPLATES:
        return list(BUILTIN_TEMPLATES[spec])
    strings = _read_list_file(spec, "template", flag)
    if not strings:
        raise DiveUsageError(f"{flag}: '{spec}' holds no templates")
    try:
        return [_format_template(s) for s in strings]
    except DiveUsageError as e:
        raise DiveUsageError(f"{flag}: '{spec}': {e}") from None


def stable_hash(*parts) -> int:
    """A 64-bit hash of `parts` that is the same in every process (Python's hash() of str is salted)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def template_index(seed: int, epoch: int, url: str, key: str, num_templates: int) -> int:
    """A template drawn per sample and epoch, reproducibly across workers, ranks and resumes."""
    return stable_hash(seed, epoch, url, key) % num_templates


def class_prompt(classnames: Sequence[str], templates: Sequence[Template], label: int, index: int) -> str:
    return templates[index](classnames[label])
