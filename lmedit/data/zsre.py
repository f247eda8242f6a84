"""zsRE in the MEND format (``zsre_mend_eval_portability_gpt4.json``, ``zsre_mend_train-1k.json``).

Record: ``{"subject", "src", "pred", "rephrase", "alt", "answers", "loc", "loc_ans", "cond"[, "portability"]}``.
Mapping:

* ``src`` -> prompt (a question, e.g. "What is the product made by UniFirst?"), ``subject`` -> subject
* ``alt`` -> target_new (the counterfactual answer the edit installs)
* ``answers[0]`` -> target_true (the gold answer); when there are several, all go to ``meta["answers"]``
* ``rephrase`` -> rephrase_prompts (one paraphrased question)
* (``loc``, ``loc_ans``) -> one locality pair, kind "NQ". The ``loc`` prompt keeps its ``"nq question: "`` prefix by
  default, exactly as MEND/EasyEdit feed it; ``strip_nq_prefix=True`` removes it (the raw prompt stays in
  ``meta["loc_raw"]``).
* ``portability`` (eval file only, GPT-4 written one-hop question) ``{"New Question", "New Answer",
  "Recalled Relation"}`` -> one portability pair, kind "One_Hop" in ``meta["portability_kinds"]``; the recalled
  relation triple goes to ``meta["recalled_relation"]``.
* ``pred`` (the answer MEND's base model gave) and ``cond`` go to meta. case_id is the record index.

Quirks: in ``zsre_mend_train-1k.json`` records 534 and 723 have an empty ``alt`` (no edit target); they are invalid
(DatasetError, or skipped under ``skip_invalid=True``). In 28 eval / 17 train records ``alt`` equals ``answers[0]``
(a no-op edit); they are kept and flagged ``meta["noop_edit"] = True``.
"""
from __future__ import annotations

from pathlib import Path

from ..requests import EditRequest, PromptAnswer
from .base import (Loaded, RecordError, convert_records, flatten_answers, opt_str, read_json, req_str,
                   resolve_subject, str_list, top_list)

NQ_PREFIX = "nq question: "


def _make_convert(strip_nq_prefix: bool):
    def convert(i: int, r: dict) -> EditRequest:
        meta: dict = {}
        prompt = req_str(r, "src")
        if "alt" not in r:
            raise RecordError("missing field 'alt' (the edit target)")
        target_new = r["alt"]
        if not isinstance(target_new, str) or not target_new.strip():
            raise RecordError(f"field 'alt' (the edit target) is empty or not a string: {target_new!r}")
        answers = flatten_answers(r.get("answers"))
        if len(answers) > 1:
            meta["answers"] = answers
        if answers and answers[0] == target_new:
            meta["noop_edit"] = True
        for k in ("pred", "cond"):
            v = opt_str(r, k)
            if v is not None:
                meta[k] = v
        locality = []
        loc, loc_ans = opt_str(r, "loc"), opt_str(r, "loc_ans")
        if loc is not None and loc_ans is not None:
            if strip_nq_prefix and loc.startswith(NQ_PREFIX):
                meta["loc_raw"] = loc
                loc = loc[len(NQ_PREFIX):]
            locality = [PromptAnswer(loc, loc_ans)]
            meta["locality_kinds"] = ["NQ"]
        elif loc is not None:
            meta["locality_dropped"] = [loc]
        portability = []
        port = r.get("portability")
        if isinstance(port, dict) and port:
            q, a = opt_str(port, "New Question"), opt_str(port, "New Answer")
            if q and a:
                portability = [PromptAnswer(q, a)]
                meta["portability_kinds"] = ["One_Hop"]
            if port.get("Recalled Relation"):
                meta["recalled_relation"] = port["Recalled Relation"]
        elif port not in (None, {}, []):
            raise RecordError(f"field 'portability' must be an object, got {type(port).__name__}")
        subject = opt_str(r, "subject")
        return EditRequest(
            prompt=prompt, target_new=target_new, subject=resolve_subject(subject, prompt, meta),
            target_true=answers[0] if answers else None,
            rephrase_prompts=tuple(str_list(r.get("rephrase"), "rephrase")),
            locality=locality, portability=portability, case_id=i, meta=meta)
    return convert


def load_zsre_mend(path: str | Path, *, limit: int | None = None, skip_invalid: bool = False,
                   strip_nq_prefix: bool = False) -> Loaded:
    """MEND-format zsRE: a JSON list of records (see module docstring)."""
    path = Path(path).expanduser()
    return convert_records(path, top_list(read_json(path), path), _make_convert(strip_nq_prefix),
                           limit=limit, skip_invalid=skip_invalid)
