"""ROME's ``known_1000.json``: 1,209 facts GPT-2 XL completes correctly, used for causal tracing.

Record: ``{"known_id", "subject", "attribute", "template", "prediction", "prompt", "relation_id"}``.
These are facts to trace, not edits, so: prompt and subject as is, and the known ``attribute`` is BOTH target_true
and target_new (EditRequest needs a target_new; an "edit" of these requests is a no-op by construction, flagged with
``meta["noop_edit"] = True``). To build real edits from them, replace target_new (``dataclasses.replace``).
``template`` ("{} is located in the continent"), GPT-2 XL's ``prediction`` and ``relation_id`` go to meta.
Note that ``prompt`` is not always ``template`` filled with the subject: in 478 records it extends it (the template
ends "...in the continent", the prompt "...in the continent of"). case_id is ``known_id``.
"""
from __future__ import annotations

from pathlib import Path

from ..requests import EditRequest
from .base import Loaded, convert_records, opt_str, read_json, req_str, resolve_subject, top_list


def _convert(i: int, r: dict) -> EditRequest:
    meta: dict = {"noop_edit": True}
    prompt = req_str(r, "prompt")
    attribute = req_str(r, "attribute")
    for k in ("template", "prediction", "relation_id"):
        v = opt_str(r, k)
        if v is not None:
            meta[k] = v
    return EditRequest(prompt=prompt, target_new=attribute, target_true=attribute,
                       subject=resolve_subject(opt_str(r, "subject"), prompt, meta),
                       case_id=r.get("known_id", i), meta=meta)


def load_knowns(path: str | Path, *, limit: int | None = None, skip_invalid: bool = False) -> Loaded:
    """known_1000: a JSON list of records (see module docstring)."""
    path = Path(path).expanduser()
    return convert_records(path, top_list(read_json(path), path), _convert, limit=limit, skip_invalid=skip_invalid)
