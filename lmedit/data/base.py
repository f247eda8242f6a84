"""Shared machinery of the dataset loaders: reading files, per-record error handling, answer normalisation.

Every loader is ``loader(path, *, limit=None, skip_invalid=False, **options) -> Loaded`` and is built from
:func:`read_json`, :func:`top_list` / :func:`top_dict` and :func:`convert_records`:

* a file that cannot be read, is not JSON, or has the wrong top-level shape raises :class:`DatasetError` naming the file;
* a record that cannot become a valid :class:`~lmedit.requests.EditRequest` raises :class:`DatasetError` naming the
  file, the record index and what is wrong; with ``skip_invalid=True`` it is skipped instead, a warning is logged and
  ``(index, reason)`` is appended to ``Loaded.skipped``;
* ``limit`` caps the number of requests returned (the first ``limit`` valid records, in file order).

Subject policy (shared by all loaders, see :func:`resolve_subject`): ``EditRequest`` requires the subject to occur
literally in the prompt. If it does, it is kept. If it only occurs case-insensitively, the prompt's own spelling is
used as subject and the dataset's spelling is kept in ``meta["subject_original"]``. If it does not occur at all, the
subject is left ``None`` (the request stays usable by methods that need no subject) and ``meta["subject_original"]`` /
``meta["subject_note"]`` record why. None of the staged files needs either fallback (checked: every subject occurs
literally), but users' own files may.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..requests import EditRequest, InvalidRequest, PromptAnswer

log = logging.getLogger("lmedit.data")


class DatasetError(ValueError):
    """A dataset file, or one record in it, cannot be turned into EditRequests."""


class RecordError(ValueError):
    """Raised inside a record converter; turned into a DatasetError naming the file and record index."""


class Loaded(list):
    """The list of EditRequests a loader returns, plus what was skipped.

    skipped: ``[(record_index, reason), ...]`` for records dropped under ``skip_invalid=True``
    path:    the file the requests came from
    name:    the registered dataset name (None when a loader was called directly)
    """

    def __init__(self, items: Iterable[EditRequest] = (), *, path: Path | None = None, name: str | None = None,
                 skipped: list[tuple[int, str]] | None = None, total_records: int | None = None):
        super().__init__(items)
        self.path = path
        self.name = name
        self.skipped: list[tuple[int, str]] = list(skipped or [])
        self.total_records = total_records

    def __repr__(self) -> str:
        return f"Loaded({len(self)} requests from {self.path}, skipped={len(self.skipped)})"


# ----------------------------------------------------------------------------------------------- reading files

def read_json(path: str | Path) -> Any:
    """Parse a JSON file (or JSON Lines when it ends in .jsonl); any failure is a DatasetError naming the file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetError(f"{p}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{p}: cannot read file: {e}") from e
    if p.suffix == ".jsonl":
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{p}: line {n} is not valid JSON: {e}") from e
        return out
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{p}: not valid JSON: {e}") from e


def top_list(data: Any, path: Path, what: str = "a list of records") -> list:
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected the top level to be {what} (a JSON array), got {type(data).__name__}")
    return data


def top_dict(data: Any, path: Path, keys: Iterable[str]) -> dict:
    keys = list(keys)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected the top level to be a JSON object with keys {keys}, "
                           f"got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise DatasetError(f"{path}: top-level object lacks key(s) {missing} (has {sorted(data)})")
    for k in keys:
        if not isinstance(data[k], list):
            raise DatasetError(f"{path}: top-level key {k!r} must hold a list, got {type(data[k]).__name__}")
    return data


# ----------------------------------------------------------------------------------------------- conversion

def convert_records(path: Path, records: list, convert: Callable[[int, Any], EditRequest], *,
                    limit: int | None = None, skip_invalid: bool = False) -> Loaded:
    """Apply ``convert(index, record)`` to each record, with the error policy described in the module docstring."""
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    out = Loaded(path=path, total_records=len(records))
    for i, rec in enumerate(records):
        if limit is not None and len(out) >= limit:
            break
        try:
            if not isinstance(rec, dict):
                raise RecordError(f"expected a JSON object, got {type(rec).__name__}")
            out.append(convert(i, rec))
        except (RecordError, InvalidRequest, KeyError, TypeError, AttributeError, IndexError) as e:
            reason = str(e) if isinstance(e, (RecordError, InvalidRequest)) else f"{type(e).__name__}: {e}"
            if not skip_invalid:
                raise DatasetError(f"{path}: record {i}: {reason}") from e
            out.skipped.append((i, reason))
    if out.skipped:
        first = out.skipped[0]
        log.warning("%s: skipped %d invalid record(s) of %d (first: record %d: %s)",
                    path, len(out.skipped), len(records), first[0], first[1])
    return out


def req_str(rec: dict, key: str, *, allow_empty: bool = False) -> str:
    """``rec[key]`` as a string; missing, non-string or (unless allowed) blank values are RecordErrors."""
    if key not in rec:
        raise RecordError(f"missing field {key!r}")
    v = rec[key]
    if not isinstance(v, str):
        raise RecordError(f"field {key!r} must be a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise RecordError(f"field {key!r} is empty")
    return v


def opt_str(rec: dict, key: str) -> str | None:
    """``rec[key]`` if it is a non-blank string; None when missing, null or blank; RecordError for other types."""
    v = rec.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise RecordError(f"field {key!r} must be a string, got {type(v).__name__}")
    return v if v.strip() else None


def flatten_answers(gt: Any) -> list[str]:
    """All non-blank answer strings in a ground truth that is a string, a list of aliases, or a list of alias lists.

    KnowEdit writes answers as ``"x"``, ``["x", "alias"]`` or ``[["x", "alias"], ["second answer"]]`` (several
    correct answers, each with aliases). Order is kept, so ``flatten_answers(gt)[0]`` is the canonical answer.
    """
    out: list[str] = []

    def walk(x):
        if isinstance(x, str):
            if x.strip() and x not in out:
                out.append(x)
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y)
        elif x is not None:
            raise RecordError(f"an answer must be a string or a list of strings, got {type(x).__name__}")

    walk(gt)
    return out


def resolve_subject(subject: str | None, prompt: str, meta: dict) -> str | None:
    """The subject to put in an EditRequest for this prompt (policy in the module docstring); notes go to meta."""
    if subject is None or not isinstance(subject, str) or not subject.strip():
        return None
    if subject in prompt:
        return subject
    lo = prompt.lower().find(subject.lower())
    meta["subject_original"] = subject
    if lo >= 0 and len(prompt.lower()) == len(prompt):   # lower() kept offsets, so the slice is the prompt's spelling
        found = prompt[lo:lo + len(subject)]
        if found.lower() == subject.lower() and found.strip():
            meta["subject_note"] = "subject matched the prompt case-insensitively; prompt's spelling used"
            return found
    meta["subject_note"] = "subject does not occur in the prompt; left as None"
    return None


def pairs_with_kinds(groups: Any, field: str, meta: dict) -> list[PromptAnswer]:
    """KnowEdit-style ``{"Kind": [{"prompt": ..., "ground_truth": ...}, ...], ...}`` to PromptAnswers.

    The kind of each item goes to ``meta[f"{field}_kinds"]`` (parallel to the returned list); when the ground truth has
    more than one answer/alias, ``meta[f"{field}_aliases"]`` (parallel too) holds all of them, else None. Items whose
    ground truth is empty are dropped and listed in ``meta[f"{field}_dropped"]`` as ``(kind, prompt)``.
    A prompt given as a list (seen in some KnowEdit copies) contributes one item per prompt string.
    """
    if groups in (None, {}, []):
        return []
    if not isinstance(groups, dict):
        raise RecordError(f"field {field!r} must be an object of kind -> list, got {type(groups).__name__}")
    out: list[PromptAnswer] = []
    kinds: list[str] = []
    aliases: list[list[str] | None] = []
    dropped: list[tuple[str, str]] = []
    for kind, items in groups.items():
        if items is None:
            continue
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list):
            raise RecordError(f"{field}[{kind!r}] must be a list, got {type(items).__name__}")
        for j, it in enumerate(items):
            if not isinstance(it, dict) or "prompt" not in it:
                raise RecordError(f"{field}[{kind!r}][{j}] must be an object with 'prompt' and 'ground_truth'")
            gt = it.get("ground_truth", it.get("answer"))
            answers = flatten_answers(gt)
            prompts = it["prompt"] if isinstance(it["prompt"], list) else [it["prompt"]]
            for p in prompts:
                if not isinstance(p, str) or not p.strip():
                    raise RecordError(f"{field}[{kind!r}][{j}] has an empty or non-string prompt: {p!r}")
                if not answers:
                    dropped.append((kind, p))
                    continue
                out.append(PromptAnswer(p, answers[0]))
                kinds.append(kind)
                aliases.append(answers if len(answers) > 1 else None)
    if out:
        meta[f"{field}_kinds"] = kinds
        if any(a is not None for a in aliases):
            meta[f"{field}_aliases"] = aliases
    if dropped:
        meta[f"{field}_dropped"] = dropped
    return out


def prompt_answer_list(items: Any, field: str, meta: dict, *, answer_key: str = "answer") -> list[PromptAnswer]:
    """``[{"prompt": ..., "answer": ...}, ...]`` to PromptAnswers; items with an empty answer are dropped (noted)."""
    if items in (None, []):
        return []
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        raise RecordError(f"field {field!r} must be a list of {{prompt, {answer_key}}} objects, "
                          f"got {type(items).__name__}")
    out, dropped = [], []
    for j, it in enumerate(items):
        if not isinstance(it, dict) or "prompt" not in it:
            raise RecordError(f"{field}[{j}] must be an object with 'prompt' and '{answer_key}'")
        answers = flatten_answers(it.get(answer_key))
        p = it["prompt"]
        if not isinstance(p, str) or not p.strip():
            raise RecordError(f"{field}[{j}] has an empty or non-string prompt: {p!r}")
        if not answers:
            dropped.append(p)
            continue
        out.append(PromptAnswer(p, answers[0]))
    if dropped:
        meta[f"{field}_dropped"] = dropped
    return out


def str_list(v: Any, field: str) -> list[str]:
    """A string or list of strings to a list of the non-blank ones."""
    if v is None:
        return []
    if isinstance(v, str):
        return [v] if v.strip() else []
    if isinstance(v, list):
        bad = [x for x in v if not isinstance(x, str)]
        if bad:
            raise RecordError(f"field {field!r} must hold strings, got {type(bad[0]).__name__}")
        return [x for x in v if x.strip()]
    raise RecordError(f"field {field!r} must be a string or a list of strings, got {type(v).__name__}")


def locality_pair(rec: dict, prompt_key: str, answer_key: str, meta: dict) -> list[PromptAnswer]:
    """One flat ``locality_prompt`` / ``locality_ground_truth`` pair; a blank answer drops the pair (noted in meta)."""
    p = opt_str(rec, prompt_key)
    a = rec.get(answer_key)
    if p is None:
        return []
    if isinstance(a, list):
        answers = flatten_answers(a)
        a = answers[0] if answers else None
    elif a is not None and not isinstance(a, str):
        raise RecordError(f"field {answer_key!r} must be a string, got {type(a).__name__}")
    if a is None or not a.strip():
        meta["locality_dropped"] = [p]
        return []
    return [PromptAnswer(p, a)]


# ----------------------------------------------------------------------------------------------- describing a slice
def describe(requests: Iterable[EditRequest]) -> dict[str, int]:
    """Counts that say what a slice of a dataset measures. "naming the subject" (case-insensitive) matters for
    locality: a locality prompt about the edited subject itself tests whether the edit keeps the subject's other
    facts, which subject-keyed edits (and edits that generalise over the subject) tend to disturb."""
    out = dict.fromkeys(["requests", "with subject", "with target_true", "rephrase prompts", "locality prompts",
                         "locality prompts naming the subject", "portability prompts",
                         "portability prompts naming the subject"], 0)
    for r in requests:
        subj = (r.subject or "").lower()
        out["requests"] += 1
        out["with subject"] += r.subject is not None
        out["with target_true"] += r.target_true is not None
        out["rephrase prompts"] += len(r.rephrase_prompts)
        for kind, pairs in (("locality", r.locality), ("portability", r.portability)):
            out[f"{kind} prompts"] += len(pairs)
            out[f"{kind} prompts naming the subject"] += sum(bool(subj) and subj in p.prompt.lower() for p in pairs)
    return out
