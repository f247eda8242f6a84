"""WISE / GRACE edit sets: WikiBio hallucination (``hallucination-{edit,train}.json``) and temporal
(``temporal-{edit,train}.json``).

Record: ``{"prompt", "target_new", "subject", "locality_prompt", "locality_ground_truth"[, "ood_rephrase"]}``.
Mapping: prompt, target_new, subject as is (hallucination: the prompt is a WikiBio passage prefix and target_new the
true next sentence; temporal: the prompt is an entity name such as "Tesla, Inc.," and target_new a long description).
(``locality_prompt``, ``locality_ground_truth``) -> one locality pair (kind "Text_Continuation": unrelated web text cut
mid-sentence, the answer its next ~150 characters, often starting with a space, kept verbatim). There is no
target_true.

Decisions: ``ood_rephrase`` (temporal only) is a whole paraphrased passage (prompt and continuation in other words),
not a prompt whose completion is target_new, so it is NOT used as a rephrase prompt: it is kept in
``meta["ood_rephrase"]``. An empty ``locality_ground_truth`` (hallucination-edit 7, hallucination-train 5,
temporal-train 1 records) drops that record's locality pair; the prompt is listed in ``meta["locality_dropped"]``.
case_id is the record index.
"""
from __future__ import annotations

from pathlib import Path

from ..requests import EditRequest
from .base import (Loaded, convert_records, locality_pair, opt_str, read_json, req_str, resolve_subject, str_list,
                   top_list)


def _convert(i: int, r: dict) -> EditRequest:
    meta: dict = {}
    prompt = req_str(r, "prompt")
    target_new = req_str(r, "target_new")
    loc = locality_pair(r, "locality_prompt", "locality_ground_truth", meta)
    if loc:
        meta["locality_kinds"] = ["Text_Continuation"]
    ood = opt_str(r, "ood_rephrase")
    if ood is not None:
        meta["ood_rephrase"] = ood
    subject = opt_str(r, "subject")
    return EditRequest(
        prompt=prompt, target_new=target_new, subject=resolve_subject(subject, prompt, meta),
        target_true=opt_str(r, "ground_truth"),
        rephrase_prompts=tuple(str_list(r.get("rephrase_prompt"), "rephrase_prompt")),
        locality=loc, case_id=i, meta=meta)


def load_wise(path: str | Path, *, limit: int | None = None, skip_invalid: bool = False) -> Loaded:
    """WISE hallucination / temporal sets: a JSON list of flat records (see module docstring)."""
    path = Path(path).expanduser()
    return convert_records(path, top_list(read_json(path), path), _convert, limit=limit, skip_invalid=skip_invalid)
