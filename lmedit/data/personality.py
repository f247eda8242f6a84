"""PersonalityEdit (Mao et al. 2023; ``train.json`` / ``dev.json`` / ``test.json``).

Record: ``{"ent", "extraversion": [...], "agreeableness": [...], "neuroticism": [...][, "target_per"]}``: for a topic
entity, opinions written in each of three personalities (3 each; one train record has 4). Only ``test.json`` says which
personality to edit to (``target_per``).

Mapping: prompt = ``"What do you think of {ent}?"``, subject = ent, target_personality chosen as below, target_new =
the first opinion of that personality, all its opinions in ``meta["target_responses"]``, and all three lists in
``meta["opinions"]``. There is no before-edit answer (target_true None), no rephrase, locality or portability.

Choice of target personality: the record's ``target_per`` when present; otherwise (train/dev) the loader's
``target_personality`` argument; if that is None too, it rotates through ("extraversion", "agreeableness",
"neuroticism") by record index, so the three targets are balanced. ``meta["target_per_source"]`` says which rule
applied ("record", "argument" or "rotation"). case_id is the record index.
"""
from __future__ import annotations

from pathlib import Path

from ..requests import EditRequest
from .base import Loaded, RecordError, convert_records, opt_str, read_json, req_str, str_list, top_list

PERSONALITIES = ("extraversion", "agreeableness", "neuroticism")
QUESTION_TEMPLATE = "What do you think of {}?"


def load_personality(path: str | Path, *, limit: int | None = None, skip_invalid: bool = False,
                     target_personality: str | None = None) -> Loaded:
    """PersonalityEdit: a JSON list of records (see module docstring)."""
    if target_personality is not None and target_personality not in PERSONALITIES:
        raise ValueError(f"target_personality must be one of {PERSONALITIES}, got {target_personality!r}")
    path = Path(path).expanduser()

    def convert(i: int, r: dict) -> EditRequest:
        ent = req_str(r, "ent")
        opinions = {p: str_list(r.get(p), p) for p in PERSONALITIES}
        target = opt_str(r, "target_per")
        if target is not None:
            source = "record"
            if target not in PERSONALITIES:
                raise RecordError(f"field 'target_per' must be one of {PERSONALITIES}, got {target!r}")
        elif target_personality is not None:
            target, source = target_personality, "argument"
        else:
            target, source = PERSONALITIES[i % len(PERSONALITIES)], "rotation"
        if not opinions[target]:
            raise RecordError(f"no {target!r} opinion to use as target")
        meta = {"target_per": target, "target_per_source": source, "target_responses": opinions[target],
                "opinions": opinions}
        return EditRequest(prompt=QUESTION_TEMPLATE.format(ent), target_new=opinions[target][0], subject=ent,
                           case_id=i, meta=meta)

    return convert_records(path, top_list(read_json(path), path), convert, limit=limit, skip_invalid=skip_invalid)
