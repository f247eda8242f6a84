"""KnowEdit subsets (Zhang et al. 2024): ZsRE, WikiData_recent, WikiData_counterfact, WikiBio, ConvSent, Sanitation.

Four record formats:

``load_knowedit`` (ZsRE-test-all, recent_train, train_cf): ``{"subject", "prompt", "target_new", "ground_truth"?,
"rephrase_prompt"?, "locality": {Kind: [{"prompt", "ground_truth"}]}, "portability": {Kind: [...]}}``.
Locality kinds seen: Relation_Specificity, Forgetfulness; portability kinds: Reasoning, Subject_Aliasing,
Logical_Generalization. All kinds are kept, flattened in file order into ``locality`` / ``portability``, with the
kind per item in ``meta["locality_kinds"]`` / ``meta["portability_kinds"]`` (parallel lists). Ground truths come as a
string, a list of aliases (ZsRE), or a list of alias lists, one per correct answer (wiki_recent, e.g. all siblings):
the first alias of the first answer is used, and when there is more than one string, all of them (flattened, in order)
are in ``meta["locality_aliases"]`` / ``meta["portability_aliases"]`` (parallel lists, None where single).
Items whose ground truth is empty (wiki_recent has 7 such locality items, e.g. ``[[], []]``; train_cf 2, ``""``) are
dropped and listed in ``meta["locality_dropped"]`` as ``(kind, prompt)``. ``ground_truth`` -> target_true (ZsRE: first of the list, aliases in
``meta["target_true_aliases"]``); wiki_recent has none (target_true None); train_cf record 630 has an empty one
(target_true None). ``cond`` goes to meta. case_id is the record index.

``load_knowedit_wikibio`` (wikibio-{train,test}-all): ``text`` -> prompt, ``labels`` -> target_new (the true next
sentence: hallucination correction), ``concept`` -> subject, ``locality`` as above.

``load_knowedit_convsent`` (blender_{test,val}): ``{"ent", "pos": [...], "neg": [...]}``: sentiment editing.
prompt = ``"What do you think of {ent}?"`` (subject = ent), target_new = the first response of the target sentiment
(``sentiment="pos"`` by default, or "neg"), the other responses of that sentiment in ``meta["target_responses"]``, and
both full lists in ``meta["pos"]`` / ``meta["neg"]``. There is no before-edit answer: target_true is None.
The file has no locality items; as in SERAC's ConvSent (locality = the responses about *other* entities must not
change), each request gets two locality pairs about the next record's entity (wrapping round; records without a
usable ``ent``/``pos``/``neg`` are passed over): that entity's prompt with its first positive and its first negative
response as the teacher-forced continuations (kind ``Other_Entity``; the entity in ``meta["locality_entity"]``).

``load_knowedit_sanitation`` (trivia_qa_{test,train}): one top-level object. Test: ``{"success": [...80],
"locality": [...453]}``; train: ``{"K_F": [...80], "K_R": [...453]}``. Each ``success``/``K_F`` item is one request:
``question`` -> prompt, ``target_new`` ("I don't know.") -> target_new, ``ground_truth`` -> target_true, ``subject``
(train only) -> subject. The retain set (``locality`` / ``K_R``: questions whose answer must survive) is spread
round-robin over the requests (item j goes to request j mod 80), so every retain question is used exactly once and
each request gets 5-6 locality pairs. The record index is the index in the forget list.
"""
from __future__ import annotations

from pathlib import Path

from ..requests import EditRequest, PromptAnswer
from .base import (DatasetError, Loaded, RecordError, convert_records, flatten_answers, opt_str, pairs_with_kinds,
                   read_json, req_str, resolve_subject, str_list, top_dict, top_list)


def _knowedit_convert(i: int, r: dict) -> EditRequest:
    meta: dict = {}
    prompt = req_str(r, "prompt")
    target_new = req_str(r, "target_new")
    truths = flatten_answers(r.get("ground_truth"))
    if len(truths) > 1:
        meta["target_true_aliases"] = truths
    if "ground_truth" in r and not truths:
        meta["target_true_note"] = "ground_truth is empty in the file"
    cond = opt_str(r, "cond")
    if cond is not None:
        meta["cond"] = cond
    locality = pairs_with_kinds(r.get("locality"), "locality", meta)
    portability = pairs_with_kinds(r.get("portability"), "portability", meta)
    subject = opt_str(r, "subject")
    return EditRequest(
        prompt=prompt, target_new=target_new, subject=resolve_subject(subject, prompt, meta),
        target_true=truths[0] if truths else None,
        rephrase_prompts=tuple(str_list(r.get("rephrase_prompt", r.get("rephrase")), "rephrase_prompt")),
        locality=locality, portability=portability, case_id=i, meta=meta)


def load_knowedit(path: str | Path, *, limit: int | None = None, skip_invalid: bool = False) -> Loaded:
    """KnowEdit ZsRE / wiki_recent / wiki_counterfact: a JSON list of records (see module docstring)."""
    path = Path(path).expanduser()
    return convert_records(path, top_list(read_json(path), path), _knowedit_convert,
                           limit=limit, skip_invalid=skip_invalid)


def _wikibio_convert(i: int, r: dict) -> EditRequest:
    meta: dict = {}
    prompt = req_str(r, "text")
    target_new = req_str(r, "labels")
    locality = pairs_with_kinds(r.get("locality"), "locality", meta)
    subject = opt_str(r, "concept")
    return EditRequest(prompt=prompt, target_new=target_new, subject=resolve_subject(subject, prompt, meta),
                       locality=locality, case_id=i, meta=meta)


def load_knowedit_wikibio(path: str | Path, *, limit: int | None = None, skip_invalid: bool = False) -> Loaded:
    """KnowEdit WikiBio: a JSON list of ``{"text", "labels", "concept", "locality"}`` records."""
    path = Path(path).expanduser()
    return convert_records(path, top_list(read_json(path), path), _wikibio_convert,
                           limit=limit, skip_invalid=skip_invalid)


CONVSENT_TEMPLATE = "What do you think of {}?"


def load_knowedit_convsent(path: str | Path, *, limit: int | None = None, skip_invalid: bool = False,
                           sentiment: str = "pos") -> Loaded:
    """KnowEdit ConvSent: a JSON list of ``{"ent", "pos", "neg"}``; the edit makes the model take ``sentiment``."""
    if sentiment not in ("pos", "neg"):
        raise ValueError(f"sentiment must be 'pos' or 'neg', got {sentiment!r}")
    path = Path(path).expanduser()

    records = top_list(read_json(path), path)

    def convert(i: int, r: dict) -> EditRequest:
        ent = req_str(r, "ent")
        pos, neg = str_list(r.get("pos"), "pos"), str_list(r.get("neg"), "neg")
        target = pos if sentiment == "pos" else neg
        if not target:
            raise RecordError(f"field {sentiment!r} has no non-empty response to use as target")
        meta = {"target_sentiment": sentiment, "target_responses": target, "pos": pos, "neg": neg}
        locality: tuple[PromptAnswer, ...] = ()
        other = _convsent_neighbour(records, i)
        if other is not None:
            o_ent, o_pos, o_neg = other
            o_prompt = CONVSENT_TEMPLATE.format(o_ent)
            locality = (PromptAnswer(o_prompt, o_pos[0]), PromptAnswer(o_prompt, o_neg[0]))
            meta.update(locality_kinds=["Other_Entity"] * 2, locality_entity=o_ent)
        return EditRequest(prompt=CONVSENT_TEMPLATE.format(ent), target_new=target[0], subject=ent,
                           locality=locality, case_id=i, meta=meta)

    return convert_records(path, records, convert, limit=limit, skip_invalid=skip_invalid)


def _convsent_neighbour(records: list, i: int) -> tuple[str, list[str], list[str]] | None:
    """(ent, pos, neg) of the first usable record after ``i`` (wrapping round) about another entity, or None."""
    own = records[i].get("ent") if isinstance(records[i], dict) else None
    n = len(records)
    for k in range(1, n):
        r = records[(i + k) % n]
        if not isinstance(r, dict) or not isinstance(r.get("ent"), str) or not r["ent"].strip() or r["ent"] == own:
            continue
        try:
            pos, neg = str_list(r.get("pos"), "pos"), str_list(r.get("neg"), "neg")
        except RecordError:
            continue
        if pos and neg:
            return r["ent"], pos, neg
    return None


_SANITATION_SPLITS = (("success", "locality"), ("K_F", "K_R"))


def load_knowedit_sanitation(path: str | Path, *, limit: int | None = None, skip_invalid: bool = False) -> Loaded:
    """KnowEdit Sanitation (TriviaQA forget/retain): one JSON object (see module docstring)."""
    path = Path(path).expanduser()
    data = read_json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected the top level to be a JSON object with keys 'success'/'locality' "
                           f"or 'K_F'/'K_R', got {type(data).__name__}")
    for forget_key, retain_key in _SANITATION_SPLITS:
        if forget_key in data:
            break
    else:
        raise DatasetError(f"{path}: top-level object has neither 'success' nor 'K_F' (has {sorted(data)})")
    data = top_dict(data, path, [forget_key, retain_key])
    forget, retain = data[forget_key], data[retain_key]
    n = len(forget)
    spread: list[list[tuple[int, dict]]] = [[] for _ in range(n)]
    for j, item in enumerate(retain):
        if n:
            spread[j % n].append((j, item))

    def convert(i: int, r: dict) -> EditRequest:
        meta: dict = {"split": forget_key}
        prompt = req_str(r, "question")
        target_new = req_str(r, "target_new")
        truth = opt_str(r, "ground_truth")
        locality, retain_ids, bad = [], [], []
        for j, item in spread[i]:
            q = item.get("question") if isinstance(item, dict) else None
            a = item.get("ground_truth") if isinstance(item, dict) else None
            if isinstance(q, str) and q.strip() and isinstance(a, str) and a.strip():
                locality.append(PromptAnswer(q, a))
                retain_ids.append(j)
            else:
                bad.append(j)
        if locality:
            meta["locality_kinds"] = [retain_key] * len(locality)
            meta["retain_indices"] = retain_ids
        if bad:
            meta["retain_dropped"] = bad
        subject = opt_str(r, "subject")
        return EditRequest(prompt=prompt, target_new=target_new, subject=resolve_subject(subject, prompt, meta),
                           target_true=truth, locality=locality, case_id=i, meta=meta)

    return convert_records(path, forget, convert, limit=limit, skip_invalid=skip_invalid)
