"""CounterFact in the EasyEdit / MEND flattening (``easyedit_counterfact-{edit,train,val}.json``).

Record: ``{"case_id", "prompt", "subject", "target_new", "ground_truth", "rephrase_prompt", "locality_prompt",
"locality_ground_truth"}``. Mapping: prompt, subject, target_new as is; ``ground_truth`` -> target_true;
``rephrase_prompt`` -> one rephrase prompt; (``locality_prompt``, ``locality_ground_truth``) -> one locality pair
(kind "Neighborhood" in ``meta["locality_kinds"]``); ``case_id`` is CounterFact's own case id (0..21918 across the three
disjoint splits), not the record index (``meta["index"]``).

Prompts are already filled (no ``"{}"`` template in the staged files). A prompt that still holds ``"{}"`` (a ROME
style template) is filled with the subject, and the template kept in ``meta["template"]``. ``rephrase_prompt`` and
``ground_truth`` may also be lists in user files (all rephrases kept; first ground truth used, aliases in meta).
Subjects not literally in the prompt follow the shared policy of :mod:`lmedit.data.base`.
"""
from __future__ import annotations

from pathlib import Path

from ..requests import EditRequest
from .base import (Loaded, RecordError, convert_records, flatten_answers, locality_pair, read_json, req_str,
                   resolve_subject, str_list, top_list)


def _convert(i: int, r: dict) -> EditRequest:
    meta: dict = {"index": i}
    subject = r.get("subject")
    if subject is not None and not isinstance(subject, str):
        raise RecordError(f"field 'subject' must be a string, got {type(subject).__name__}")
    prompt = req_str(r, "prompt")
    if "{}" in prompt:
        if not subject:
            raise RecordError("prompt is a '{}' template but the record has no subject")
        meta["template"] = prompt
        prompt = prompt.replace("{}", subject)
    target_new = r.get("target_new")
    if isinstance(target_new, dict):          # ROME style {"str": ..., "id": ...}
        target_new = target_new.get("str")
    if target_new is None:
        raise RecordError("missing field 'target_new'")
    if not isinstance(target_new, str) or not target_new.strip():
        raise RecordError(f"field 'target_new' is empty or not a string: {target_new!r}")
    truths = flatten_answers(r.get("ground_truth"))
    if len(truths) > 1:
        meta["target_true_aliases"] = truths
    loc = locality_pair(r, "locality_prompt", "locality_ground_truth", meta)
    if loc:
        meta["locality_kinds"] = ["Neighborhood"]
    rephrases = [p.replace("{}", subject) if subject else p for p in str_list(r.get("rephrase_prompt"), "rephrase_prompt")]
    return EditRequest(
        prompt=prompt, target_new=target_new, subject=resolve_subject(subject, prompt, meta),
        target_true=truths[0] if truths else None, rephrase_prompts=tuple(rephrases), locality=loc,
        case_id=r.get("case_id", i), meta=meta)


def load_counterfact(path: str | Path, *, limit: int | None = None, skip_invalid: bool = False) -> Loaded:
    """EasyEdit-format CounterFact: a JSON list of flat records (see module docstring)."""
    path = Path(path).expanduser()
    return convert_records(path, top_list(read_json(path), path), _convert, limit=limit, skip_invalid=skip_invalid)
