"""CKnowEdit (CCKS-2024 release, ``ccks-CKnowEdit.json``): Chinese literary / idiom / poetry knowledge edits.

Record: ``{"prompt", "target_old", "target_new", "rephrase": [...], "portability": [{"prompt", "answer"}],
"locality"?: [{"prompt", "answer"}]}`` (``locality`` present in 397 of 700 records).
Mapping: prompt and target_new as is; ``target_old`` -> target_true (the answer the model tends to give, often a
long wrong explanation); ``rephrase`` -> rephrase_prompts; ``portability`` / ``locality`` -> PromptAnswer lists.
There is no subject field, and the prompts are instructions ("请填写下列古诗文的后一句：..."), so subject is None:
locate-then-edit methods (ROME, MEMIT) cannot take these requests without a subject supplied by the caller.
case_id is the record index (the file has no id).
"""
from __future__ import annotations

from pathlib import Path

from ..requests import EditRequest
from .base import (Loaded, convert_records, opt_str, prompt_answer_list, read_json, req_str, resolve_subject,
                   str_list, top_list)


def _convert(i: int, r: dict) -> EditRequest:
    meta: dict = {}
    prompt = req_str(r, "prompt")
    target_new = req_str(r, "target_new")
    return EditRequest(
        prompt=prompt, target_new=target_new, subject=resolve_subject(opt_str(r, "subject"), prompt, meta),
        target_true=opt_str(r, "target_old"),
        rephrase_prompts=tuple(str_list(r.get("rephrase"), "rephrase")),
        locality=prompt_answer_list(r.get("locality"), "locality", meta),
        portability=prompt_answer_list(r.get("portability"), "portability", meta),
        case_id=i, meta=meta)


def load_cknowedit(path: str | Path, *, limit: int | None = None, skip_invalid: bool = False) -> Loaded:
    """CKnowEdit: a JSON list of records (see module docstring)."""
    path = Path(path).expanduser()
    return convert_records(path, top_list(read_json(path), path), _convert, limit=limit, skip_invalid=skip_invalid)
