"""ConflictEdit and RoundEdit from "Unveiling the Pitfalls of Knowledge Editing" (Li et al. 2024), GPT-J variants.

Every edit in these files is a Wikidata triple ``{"relation": {"id", "prompt": "The notable work of {} is", "query",
"label"}, "subject": {"id", "label"}, "object": {"id", "label"}, "new_object": {"id", "label"}}``; as a request:
prompt = relation prompt with ``{}`` replaced by the subject label, subject = subject label, target_new =
new_object label, target_true = object label (relation prompts are kept verbatim, typos such as "The creater of {} is"
included).

ConflictEdit (``reverse_edit.json``, ``composite_edit.json``, ``coverage_edit.json``): a record is a PAIR of edits
meant to be applied in order (``edits``), plus the original facts (``triples``), the indices of the triples that must
keep holding (``prerequisites``), the logical ``rule`` (e.g. "P800>P170", absent for coverage) and ``type``. One
request per record (so counts match the files): the request is ``edits[0]``; the whole structure is in
``meta["conflict"] = {"type", "rule", "triples", "prerequisites", "edits"}`` with ``edits`` as dicts of request
fields (prompt, subject, target_new, target_true) plus ``relation_id`` and ``query``. :func:`expand_edits` turns a request back into the
full list of EditRequests, in editing order.

RoundEdit (``easy.json``, ``hard.json``): one edit per record on a 1-to-n relation (``type`` "1-3@P276": 3 true
objects, relation P276). The request is the forward edit; the edit back (new_object -> object) is in
``meta["round_trip"]`` (also returned by :func:`expand_edits` as the second request), and all true objects are in
``meta["true_objects"]`` (labels) / ``meta["true_object_ids"]``.

Paraphrases: the folder's prompt banks (``conflict_prompts.json`` / ``round_prompts.json``: relation id -> templates)
fill rephrase_prompts with the relation's other templates applied to the subject (the template equal to the prompt is
left out). By default the bank next to the data file is used if it exists; pass ``prompt_bank=PATH`` to choose one or
``prompt_bank=False`` to get no rephrases. Relations missing from the bank get none. case_id is the record index.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..requests import EditRequest
from .base import DatasetError, Loaded, RecordError, convert_records, read_json, top_list

CONFLICT_BANK = "conflict_prompts.json"
ROUND_BANK = "round_prompts.json"


def _label(obj: Any, where: str) -> str:
    if not isinstance(obj, dict):
        raise RecordError(f"{where} must be an object with 'label', got {type(obj).__name__}")
    lab = obj.get("label")
    if not isinstance(lab, str) or not lab.strip():
        raise RecordError(f"{where}.label is missing or empty")
    return lab


def _fill(template: str, subject: str) -> str:
    return template.replace("{}", subject) if "{}" in template else f"{template} {subject}"


def _edit_dict(e: Any, where: str) -> dict:
    """One triple edit as a request dict (prompt, subject, target_new, target_true) plus relation_id / query."""
    if not isinstance(e, dict):
        raise RecordError(f"{where} must be an object, got {type(e).__name__}")
    rel = e.get("relation")
    if not isinstance(rel, dict) or not isinstance(rel.get("prompt"), str) or not rel["prompt"].strip():
        raise RecordError(f"{where}.relation.prompt is missing or empty")
    subject = _label(e.get("subject"), f"{where}.subject")
    if "new_object" not in e:
        raise RecordError(f"{where} has no 'new_object' (the edit target)")
    d = {"prompt": _fill(rel["prompt"], subject), "subject": subject,
         "target_new": _label(e["new_object"], f"{where}.new_object"),
         "target_true": _label(e["object"], f"{where}.object") if e.get("object") is not None else None,
         "relation_id": rel.get("id"), "query": rel.get("query")}
    return d


def _load_bank(bank: Any, data_path: Path, default_name: str) -> dict[str, list[str]]:
    if bank is False:
        return {}
    if bank is None:
        p = data_path.parent / default_name
        if not p.is_file():
            return {}
    else:
        p = Path(bank).expanduser()
    raw = read_json(p)
    if not isinstance(raw, dict) or not all(isinstance(v, list) and all(isinstance(t, str) for t in v)
                                           for v in raw.values()):
        raise DatasetError(f"{p}: a prompt bank must be a JSON object of relation id -> list of template strings")
    return raw


def _rephrases(bank: dict[str, list[str]], relation_id: str | None, subject: str, prompt: str) -> tuple[str, ...]:
    out = []
    for t in bank.get(relation_id or "", []):
        if not t.strip():
            continue
        p = _fill(t, subject)
        if p != prompt and p not in out:
            out.append(p)
    return tuple(out)


def _request(d: dict, case_id: int, meta: dict, rephrase: tuple[str, ...] = ()) -> EditRequest:
    return EditRequest(prompt=d["prompt"], target_new=d["target_new"], subject=d["subject"],
                       target_true=d["target_true"], rephrase_prompts=rephrase, case_id=case_id, meta=meta)


def load_pitfalls_conflict(path: str | Path, *, limit: int | None = None, skip_invalid: bool = False,
                           prompt_bank: str | Path | bool | None = None) -> Loaded:
    """ConflictEdit (reverse / composite / coverage): one request per record, the pair in meta (module docstring)."""
    path = Path(path).expanduser()
    records = top_list(read_json(path), path)
    bank = _load_bank(prompt_bank, path, CONFLICT_BANK)

    def convert(i: int, r: dict) -> EditRequest:
        edits = r.get("edits")
        if not isinstance(edits, list) or not edits:
            raise RecordError("field 'edits' must be a non-empty list")
        ds = [_edit_dict(e, f"edits[{k}]") for k, e in enumerate(edits)]
        first = ds[0]
        meta = {"relation_id": first["relation_id"], "query": first["query"],
                "conflict": {"type": r.get("type"), "rule": r.get("rule"), "triples": r.get("triples", []),
                             "prerequisites": r.get("prerequisites", []), "edits": ds}}
        return _request(first, i, meta, _rephrases(bank, first["relation_id"], first["subject"], first["prompt"]))

    return convert_records(path, records, convert, limit=limit, skip_invalid=skip_invalid)


def load_pitfalls_round(path: str | Path, *, limit: int | None = None, skip_invalid: bool = False,
                        prompt_bank: str | Path | bool | None = None) -> Loaded:
    """RoundEdit (easy / hard): the forward edit as the request, the edit back in meta (module docstring)."""
    path = Path(path).expanduser()
    records = top_list(read_json(path), path)
    bank = _load_bank(prompt_bank, path, ROUND_BANK)

    def convert(i: int, r: dict) -> EditRequest:
        d = _edit_dict(r.get("edit"), "edit")
        if d["target_true"] is None:
            raise RecordError("edit.object (the fact to restore) is missing")
        back = dict(d, target_new=d["target_true"], target_true=d["target_new"])
        trues = r.get("true_objects") or []
        if not isinstance(trues, list):
            raise RecordError("field 'true_objects' must be a list")
        meta = {"relation_id": d["relation_id"], "query": d["query"], "type": r.get("type"), "round_trip": back,
                "true_objects": [_label(o, f"true_objects[{k}]") for k, o in enumerate(trues)],
                "true_object_ids": [o.get("id") for o in trues]}
        return _request(d, i, meta, _rephrases(bank, d["relation_id"], d["subject"], d["prompt"]))

    return convert_records(path, records, convert, limit=limit, skip_invalid=skip_invalid)


def expand_edits(request: EditRequest) -> list[EditRequest]:
    """All edits behind a pitfalls request, in order: the ConflictEdit pair, or RoundEdit's forward edit and edit back.

    Requests of other datasets come back as ``[request]``. Rephrase prompts are kept only on the request that has
    them (the first); the others get the same case_id and ``meta["step"]``.
    """
    if "conflict" in request.meta:
        ds = request.meta["conflict"]["edits"]
    elif "round_trip" in request.meta:
        ds = [None, request.meta["round_trip"]]
    else:
        return [request]
    out = [request]
    for k, d in enumerate(ds[1:], 1):
        out.append(_request(d, request.case_id, {"step": k, "relation_id": d.get("relation_id"),
                                                 "query": d.get("query")}))
    return out
