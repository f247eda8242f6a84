"""SafeEdit inputs (``nlpcc2024_detoxify_val_SafeEdit_test_ALL_inputs.json``): 540 adversarial inputs, 9 unsafety
categories x 60, from the NLPCC-2024 detoxification template.

Record: ``{"id", "unsafety category", "question", "attack name", "input", "response"}``.
This release carries NO gold safe response, and ``response`` is an example (often unsafe or empty) model output from
the submission template, not a target. Decisions:

* prompt = ``input`` (the attack prompt wrapping the harmful question); subject None (detoxification has no subject).
* target_new = ``safe_response``: a fixed refusal, :data:`DEFAULT_SAFE_RESPONSE` unless the caller passes another;
  ``meta["target_is_placeholder"] = True`` says so. A record that has its own ``"safe generation"`` (the full
  SafeEdit schema) uses that instead, and its ``"unsafe generation"`` becomes target_true.
* rephrase_prompts = [``question``] when it differs from ``input``: the bare harmful question, SafeEdit's "only
  harmful question" generalisation test. For ``attack name == "None"`` (135 records) input and question are the same
  and there is no rephrase.
* meta: ``unsafety_category``, ``attack_name``, ``question``, ``template_response`` (the template's ``response``), and
  for full-schema records ``attack_category``, ``generalization_test`` and ``knowledge_constrain`` (the latter also
  becomes a locality pair, kind "Knowledge_Constrain").
* case_id = ``id``.
"""
from __future__ import annotations

from pathlib import Path

from ..requests import EditRequest, PromptAnswer
from .base import Loaded, RecordError, convert_records, opt_str, read_json, top_list

DEFAULT_SAFE_RESPONSE = "I'm sorry, but I can't help with that request."


def load_safeedit(path: str | Path, *, limit: int | None = None, skip_invalid: bool = False,
                  safe_response: str = DEFAULT_SAFE_RESPONSE) -> Loaded:
    """SafeEdit inputs or full-schema records: a JSON list (see module docstring)."""
    if not isinstance(safe_response, str) or not safe_response.strip():
        raise ValueError("safe_response must be a non-empty string")
    path = Path(path).expanduser()

    def convert(i: int, r: dict) -> EditRequest:
        prompt = opt_str(r, "input") or opt_str(r, "adversarial prompt")
        if prompt is None:
            raise RecordError("missing or empty field 'input' (the prompt)")
        question = opt_str(r, "question")
        meta: dict = {"unsafety_category": opt_str(r, "unsafety category"), "attack_name": opt_str(r, "attack name"),
                      "question": question}
        if "response" in r:
            meta["template_response"] = r["response"]
        safe = opt_str(r, "safe generation")
        if safe is None:
            target_new, meta["target_is_placeholder"] = safe_response, True
        else:
            target_new = safe
        locality = []
        if isinstance(r.get("knowledge constrain"), dict):
            kc = r["knowledge constrain"]
            meta["knowledge_constrain"] = kc
            if opt_str(kc, "prompt") and opt_str(kc, "answer"):
                locality = [PromptAnswer(kc["prompt"], kc["answer"])]
                meta["locality_kinds"] = ["Knowledge_Constrain"]
        for src, dst in (("attack category", "attack_category"), ("generalization test", "generalization_test")):
            if r.get(src) is not None:
                meta[dst] = r[src]
        return EditRequest(
            prompt=prompt, target_new=target_new, target_true=opt_str(r, "unsafe generation"),
            rephrase_prompts=(question,) if question and question != prompt else (),
            locality=locality, case_id=r.get("id", i), meta=meta)

    return convert_records(path, top_list(read_json(path), path), convert, limit=limit, skip_invalid=skip_invalid)
