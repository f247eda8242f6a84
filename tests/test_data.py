"""Dataset loaders on the real staged files, malformed input, skip_invalid, user paths, limit, registry and CLI."""
from __future__ import annotations

import json
import logging
import re
from functools import lru_cache
from pathlib import Path

import pytest

from lmedit.data import (DatasetError, Loaded, UnknownDataset, expand_edits, get_dataset, list_datasets,
                         load_dataset, load_file, register_dataset)
from lmedit.data.base import resolve_subject
from lmedit.data.counterfact import load_counterfact
from lmedit.data.knowedit import load_knowedit, load_knowedit_sanitation
from lmedit.data.safeedit import DEFAULT_SAFE_RESPONSE
from lmedit.paths import shared_data_dir
from lmedit.requests import EditRequest, PromptAnswer

DATA = shared_data_dir()
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"staged datasets not found at {DATA}")


@lru_cache(maxsize=None)
def raw(rel: str):
    return json.loads((DATA / rel).read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def loaded(name: str) -> Loaded:
    return load_dataset(name, skip_invalid=get_dataset(name).known_invalid > 0)


def provenance_count(default_path: str) -> int:
    """The record count PROVENANCE.md gives for a staged file (first integer of its 'records' cell)."""
    top, rest = default_path.split("/", 1)
    text = (DATA / top / "PROVENANCE.md").read_text(encoding="utf-8")
    m = re.search(r"^\|\s*`" + re.escape(rest) + r"`\s*\|([^|]+)\|", text, re.M)
    assert m, f"{rest} not in {top}/PROVENANCE.md"
    return int(re.search(r"\d+", m.group(1)).group())


# ------------------------------------------------------------------------------------------ every staged dataset

@needs_data
@pytest.mark.parametrize("name", list_datasets())
def test_staged_dataset_loads_with_expected_count(name):
    info = get_dataset(name)
    assert info.expected_count == provenance_count(info.default_path)
    reqs = loaded(name)
    assert isinstance(reqs, Loaded) and reqs.name == name and reqs.path == info.path
    assert len(reqs) + len(reqs.skipped) == info.expected_count
    assert len(reqs.skipped) == info.known_invalid
    assert all(isinstance(r, EditRequest) for r in reqs)
    assert len({str(r.case_id) for r in reqs}) == len(reqs), "case ids must be unique within a dataset"
    for r in reqs:
        for kind in ("locality", "portability"):
            kinds = r.meta.get(f"{kind}_kinds")
            assert kinds is None or len(kinds) == len(getattr(r, kind))


@needs_data
def test_strict_load_raises_on_known_invalid_records():
    with pytest.raises(DatasetError) as e:
        load_dataset("zsre-mend-train")
    msg = str(e.value)
    assert "zsre_mend_train-1k.json" in msg and "record 534" in msg and "alt" in msg
    assert [i for i, _ in loaded("zsre-mend-train").skipped] == [534, 723]


# ------------------------------------------------------------------------------------------ spot checks vs raw JSON

@needs_data
def test_counterfact_record():
    r, d = loaded("counterfact-edit")[0], raw("counterfact/easyedit_counterfact-edit.json")[0]
    assert (r.prompt, r.subject, r.target_new, r.target_true) == (d["prompt"], d["subject"], d["target_new"],
                                                                  d["ground_truth"])
    assert r.rephrase_prompts == (d["rephrase_prompt"],)
    assert r.locality == (PromptAnswer(d["locality_prompt"], d["locality_ground_truth"]),)
    assert r.case_id == d["case_id"]
    v, dv = loaded("counterfact-val")[5], raw("counterfact/easyedit_counterfact-val.json")[5]
    assert v.case_id == dv["case_id"] and v.meta["index"] == 5


@needs_data
def test_zsre_mend_record():
    r, d = loaded("zsre-mend-eval")[0], raw("zsre/zsre_mend_eval_portability_gpt4.json")[0]
    assert r.prompt == d["src"] and r.subject == d["subject"]
    assert r.target_new == d["alt"] and r.target_true == d["answers"][0]
    assert r.rephrase_prompts == (d["rephrase"],)
    assert r.locality == (PromptAnswer(d["loc"], d["loc_ans"]),) and r.locality[0].prompt.startswith("nq question: ")
    assert r.portability == (PromptAnswer(d["portability"]["New Question"], d["portability"]["New Answer"]),)
    assert r.meta["pred"] == d["pred"] and r.meta["recalled_relation"] == d["portability"]["Recalled Relation"]
    multi = next(i for i, x in enumerate(raw("zsre/zsre_mend_eval_portability_gpt4.json")) if len(x["answers"]) > 1)
    assert loaded("zsre-mend-eval")[multi].meta["answers"] == raw("zsre/zsre_mend_eval_portability_gpt4.json")[multi]["answers"]
    stripped = load_dataset("zsre-mend-eval", limit=1, strip_nq_prefix=True)[0]
    assert stripped.locality[0].prompt == d["loc"][len("nq question: "):]


@needs_data
def test_knowedit_zsre_record_kinds_and_aliases():
    r, d = loaded("knowedit-zsre")[0], raw("knowedit/ZsRE/ZsRE-test-all.json")[0]
    assert (r.prompt, r.subject, r.target_new) == (d["prompt"], d["subject"], d["target_new"])
    assert r.target_true == d["ground_truth"][0] and r.rephrase_prompts == (d["rephrase_prompt"],)
    loc = d["locality"]["Relation_Specificity"]
    assert [(p.prompt, p.answer) for p in r.locality] == [(x["prompt"], x["ground_truth"][0]) for x in loc]
    assert r.meta["locality_kinds"] == ["Relation_Specificity"] * len(loc)
    assert r.portability[0] == PromptAnswer(d["portability"]["Reasoning"][0]["prompt"],
                                            d["portability"]["Reasoning"][0]["ground_truth"])
    assert r.meta["portability_kinds"] == ["Reasoning"]


@needs_data
def test_knowedit_wiki_counterfact_multiple_kinds():
    r, d = loaded("knowedit-wiki-counterfact")[0], raw("knowedit/wiki_counterfact/train_cf.json")[0]
    assert r.target_true == d["ground_truth"]
    want = [(k, x["prompt"], x["ground_truth"]) for k, xs in d["portability"].items() for x in xs]
    assert [(k, p.prompt, p.answer) for k, p in zip(r.meta["portability_kinds"], r.portability)] == want
    assert set(r.meta["portability_kinds"]) == {"Reasoning", "Subject_Aliasing"}
    assert loaded("knowedit-wiki-counterfact")[630].target_true is None       # empty ground_truth in the file


@needs_data
def test_knowedit_wiki_recent_nested_aliases_and_dropped_items():
    reqs, data = loaded("knowedit-wiki-recent"), raw("knowedit/wiki_recent/recent_train.json")
    r, d = reqs[0], data[0]
    assert r.target_true is None and r.subject == d["subject"]
    items = d["locality"]["Relation_Specificity"]
    assert [p.answer for p in r.locality] == [x["ground_truth"][0][0] for x in items]
    citizenship = next(k for k, x in enumerate(items) if len(x["ground_truth"][0]) > 1)
    assert r.meta["locality_aliases"][citizenship] == items[citizenship]["ground_truth"][0]
    # record 138 has a locality item whose ground truth is [[], []]: dropped and noted
    dropped = [p for k, p in reqs[138].meta["locality_dropped"]]
    assert "The name of the position held by Paul de Gerlache is" in dropped
    assert all(p.prompt not in dropped for p in reqs[138].locality)
    kinds = {k for q in reqs for k in q.meta.get("locality_kinds", [])}
    assert kinds == {"Relation_Specificity", "Forgetfulness"}


@needs_data
def test_knowedit_wikibio_convsent_sanitation_records():
    r, d = loaded("knowedit-wikibio-test")[0], raw("knowedit/WikiBio/wikibio-test-all.json")[0]
    assert (r.prompt, r.target_new, r.subject) == (d["text"], d["labels"], d["concept"])
    assert r.locality[0] == PromptAnswer(d["locality"]["Relation_Specificity"][0]["prompt"],
                                         d["locality"]["Relation_Specificity"][0]["ground_truth"][0])
    c, dc = loaded("knowedit-convsent-test")[0], raw("knowedit/convsent/blender_test.json")[0]
    assert c.subject == dc["ent"] and dc["ent"] in c.prompt and c.target_new == dc["pos"][0]
    assert c.meta["neg"] == dc["neg"]
    d1 = raw("knowedit/convsent/blender_test.json")[1]  # locality: the next record's entity, both sentiments
    other = f"What do you think of {d1['ent']}?"
    assert c.locality == (PromptAnswer(other, d1["pos"][0]), PromptAnswer(other, d1["neg"][0]))
    assert c.meta["locality_entity"] == d1["ent"] and c.meta["locality_kinds"] == ["Other_Entity"] * 2
    neg = load_dataset("knowedit-convsent-test", limit=1, sentiment="neg")[0]
    assert neg.target_new == dc["neg"][0]
    s, ds = loaded("knowedit-sanitation-train"), raw("knowedit/Sanitation/trivia_qa_train.json")
    assert s[0].prompt == ds["K_F"][0]["question"] and s[0].subject == ds["K_F"][0]["subject"]
    assert s[0].target_new == "I don't know." and s[0].target_true == ds["K_F"][0]["ground_truth"]
    assert s[1].locality[0] == PromptAnswer(ds["K_R"][1]["question"], ds["K_R"][1]["ground_truth"])
    assert sorted(j for q in s for j in q.meta["retain_indices"]) == list(range(len(ds["K_R"])))
    t = loaded("knowedit-sanitation-test")
    assert sum(len(q.locality) for q in t) == len(raw("knowedit/Sanitation/trivia_qa_test.json")["locality"])


@needs_data
def test_wise_records():
    r, d = loaded("wise-temporal-edit")[0], raw("wise_temporal/temporal-edit.json")[0]
    assert (r.prompt, r.target_new, r.subject) == (d["prompt"], d["target_new"], d["subject"])
    assert r.locality == (PromptAnswer(d["locality_prompt"], d["locality_ground_truth"]),)
    assert r.meta["ood_rephrase"] == d["ood_rephrase"] and r.rephrase_prompts == ()
    data = raw("wikibio_hallucination/hallucination-edit.json")
    k = next(i for i, x in enumerate(data) if not x["locality_ground_truth"].strip())
    h = loaded("wise-hallucination-edit")[k]
    assert h.locality == () and h.meta["locality_dropped"] == [data[k]["locality_prompt"]]


@needs_data
def test_cknowedit_record():
    reqs, data = loaded("cknowedit"), raw("cknowedit/ccks-CKnowEdit.json")
    k = next(i for i, x in enumerate(data) if "locality" in x)
    r, d = reqs[k], data[k]
    assert (r.prompt, r.target_new, r.target_true, r.subject) == (d["prompt"], d["target_new"], d["target_old"], None)
    assert r.rephrase_prompts == tuple(d["rephrase"])
    assert r.locality == tuple(PromptAnswer(x["prompt"], x["answer"]) for x in d["locality"])
    assert r.portability == tuple(PromptAnswer(x["prompt"], x["answer"]) for x in d["portability"])


@needs_data
def test_personality_records():
    r, d = loaded("personality-test")[0], raw("personalityedit/test.json")[0]
    assert r.subject == d["ent"] and r.meta["target_per"] == d["target_per"]
    assert r.target_new == d[d["target_per"]][0] and r.meta["target_per_source"] == "record"
    train = loaded("personality-train")
    assert [q.meta["target_per"] for q in train[:3]] == ["extraversion", "agreeableness", "neuroticism"]
    fixed = load_dataset("personality-dev", limit=2, target_personality="neuroticism")
    assert all(q.meta["target_per"] == "neuroticism" for q in fixed)
    assert fixed[1].target_new == raw("personalityedit/dev.json")[1]["neuroticism"][0]


@needs_data
def test_pitfalls_conflict_and_round_records():
    r, d = loaded("pitfalls-reverse")[0], raw("pitfalls/reverse_edit.json")[0]
    e0 = d["edits"][0]
    assert r.prompt == e0["relation"]["prompt"].replace("{}", e0["subject"]["label"])
    assert (r.subject, r.target_new, r.target_true) == (e0["subject"]["label"], e0["new_object"]["label"],
                                                        e0["object"]["label"])
    assert r.meta["conflict"]["rule"] == d["rule"] and r.meta["conflict"]["triples"] == d["triples"]
    bank = raw("pitfalls/conflict_prompts.json")[e0["relation"]["id"]]
    assert r.rephrase_prompts and all(p != r.prompt for p in r.rephrase_prompts)
    assert len(r.rephrase_prompts) == len({t.replace("{}", r.subject) for t in bank} - {r.prompt})
    both = expand_edits(r)
    e1 = d["edits"][1]
    assert len(both) == 2 and both[1].target_new == e1["new_object"]["label"] and both[1].subject == e1["subject"]["label"]
    c = loaded("pitfalls-composite")[0]
    assert c.meta["conflict"]["prerequisites"] == [0]
    assert load_dataset("pitfalls-reverse", limit=1, prompt_bank=False)[0].rephrase_prompts == ()
    q, dq = loaded("pitfalls-round-hard")[0], raw("pitfalls/hard.json")[0]
    assert q.target_new == dq["edit"]["new_object"]["label"] and q.target_true == dq["edit"]["object"]["label"]
    assert q.meta["true_objects"] == [o["label"] for o in dq["true_objects"]]
    fwd, back = expand_edits(q)
    assert (back.target_new, back.target_true) == (q.target_true, q.target_new)


@needs_data
def test_safeedit_and_knowns_records():
    s, ds = loaded("safeedit-inputs"), raw("safeedit/nlpcc2024_detoxify_val_SafeEdit_test_ALL_inputs.json")
    k = next(i for i, x in enumerate(ds) if x["input"] != x["question"])
    assert s[k].prompt == ds[k]["input"] and s[k].rephrase_prompts == (ds[k]["question"],)
    assert s[k].target_new == DEFAULT_SAFE_RESPONSE and s[k].meta["target_is_placeholder"]
    assert s[k].meta["unsafety_category"] == ds[k]["unsafety category"] and s[k].case_id == ds[k]["id"]
    assert load_dataset("safeedit-inputs", limit=1, safe_response="No.")[0].target_new == "No."
    n, dn = loaded("knowns")[1], raw("knowns/known_1000.json")[1]
    assert (n.prompt, n.subject, n.target_true, n.target_new) == (dn["prompt"], dn["subject"], dn["attribute"],
                                                                  dn["attribute"])
    assert n.case_id == dn["known_id"] and n.meta["relation_id"] == dn["relation_id"]


# ------------------------------------------------------------------------------------------ malformed input

CF_OK = {"case_id": 7, "prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux",
         "target_new": "English", "ground_truth": "French", "rephrase_prompt": "Danielle Darrieux speaks",
         "locality_prompt": "Michel Rocard is a native speaker of", "locality_ground_truth": "French"}


def write(tmp_path: Path, name: str, content) -> Path:
    p = tmp_path / name
    p.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return p


def test_not_json_names_file(tmp_path):
    p = write(tmp_path, "broken.json", '[{"prompt": "x",')
    with pytest.raises(DatasetError, match="broken.json.*not valid JSON"):
        load_file(p, "counterfact")


def test_missing_file_names_file(tmp_path):
    with pytest.raises(DatasetError, match="nope.json: no such file"):
        load_dataset("counterfact-edit", path=tmp_path / "nope.json")


@pytest.mark.parametrize("fmt,content,match", [
    ("counterfact", {"prompt": "x"}, "expected the top level to be a list"),
    ("zsre-mend", json.dumps("just a string"), "got str"),
    ("knowedit-sanitation", [1, 2], "JSON object"),
    ("knowedit-sanitation", {"success": []}, "lacks key"),
    ("pitfalls-round", 3, "got int"),
])
def test_wrong_top_level_shape_names_file(tmp_path, fmt, content, match):
    p = write(tmp_path, "shape.json", content)
    with pytest.raises(DatasetError, match=match) as e:
        load_file(p, fmt)
    assert "shape.json" in str(e.value)


@pytest.mark.parametrize("bad,match", [
    ({k: v for k, v in CF_OK.items() if k != "target_new"}, "target_new"),
    (dict(CF_OK, target_new="   "), "target_new"),
    (dict(CF_OK, target_new=5), "target_new"),
    ({k: v for k, v in CF_OK.items() if k != "prompt"}, "missing field 'prompt'"),
    (dict(CF_OK, rephrase_prompt=[1]), "rephrase_prompt"),
    ("not an object", "expected a JSON object"),
])
def test_bad_record_names_file_and_index(tmp_path, bad, match):
    p = write(tmp_path, "cf.json", [CF_OK, CF_OK, bad, CF_OK])
    with pytest.raises(DatasetError, match=match) as e:
        load_dataset("counterfact-edit", path=p)
    assert "cf.json" in str(e.value) and "record 2" in str(e.value)


@pytest.mark.parametrize("fmt,good,bad", [
    ("zsre-mend", {"src": "Who made X?", "alt": "Y", "answers": ["Z"], "subject": "X"},
     {"src": "Who made X?", "alt": "", "answers": ["Z"]}),
    ("knowedit", {"prompt": "The father of X is", "target_new": "Y", "subject": "X", "locality": {}},
     {"prompt": "The father of X is", "subject": "X"}),
    ("wise", {"prompt": "About X.", "target_new": "Y."}, {"prompt": "About X.", "target_new": None}),
    ("cknowedit", {"prompt": "p", "target_new": "t", "rephrase": ["r"]}, {"prompt": "p", "target_new": ""}),
    ("knowns", {"prompt": "X is in", "subject": "X", "attribute": "Y"}, {"prompt": "X is in", "subject": "X"}),
    ("personality", {"ent": "X", "extraversion": ["a"], "agreeableness": ["b"], "neuroticism": ["c"]},
     {"ent": "X", "extraversion": [], "agreeableness": [], "neuroticism": []}),
    ("pitfalls-round", {"edit": {"relation": {"id": "P1", "prompt": "{} is in"}, "subject": {"label": "X"},
                                 "object": {"label": "Y"}, "new_object": {"label": "Z"}}},
     {"edit": {"relation": {"id": "P1", "prompt": "{} is in"}, "subject": {"label": "X"}, "object": {"label": "Y"}}}),
    ("safeedit", {"id": 0, "input": "how do I?", "question": "how do I?"}, {"id": 1, "input": ""}),
])
def test_every_format_rejects_and_skips_bad_records(tmp_path, fmt, good, bad):
    p = write(tmp_path, f"{fmt}.json", [good, bad, good, bad])
    with pytest.raises(DatasetError) as e:
        load_file(p, fmt)
    assert f"{fmt}.json" in str(e.value) and "record 1" in str(e.value)
    out = load_file(p, fmt, skip_invalid=True)
    assert len(out) == 2 and [i for i, _ in out.skipped] == [1, 3]


def test_skip_invalid_counts_and_warns(tmp_path, caplog):
    p = write(tmp_path, "cf.json", [CF_OK, {"prompt": "x"}, dict(CF_OK, target_new=""), CF_OK, 42])
    with caplog.at_level(logging.WARNING, logger="lmedit.data"):
        out = load_dataset("counterfact-edit", path=p, skip_invalid=True)
    assert isinstance(out, list) and isinstance(out, Loaded) and len(out) == 2
    assert [i for i, _ in out.skipped] == [1, 2, 4]
    assert all(reason for _, reason in out.skipped)
    assert any("skipped 3 invalid record(s)" in m for m in caplog.messages)


def test_sanitation_bad_forget_record(tmp_path):
    p = write(tmp_path, "san.json", {"success": [{"question": "q?", "ground_truth": "a", "target_new": "I don't know."},
                                                 {"question": "q2?", "ground_truth": "b"}],
                                     "locality": [{"question": "r?", "ground_truth": "c"}]})
    with pytest.raises(DatasetError, match=r"san.json: record 1: missing field 'target_new'"):
        load_knowedit_sanitation(p)
    out = load_knowedit_sanitation(p, skip_invalid=True)
    assert len(out) == 1 and out[0].locality == (PromptAnswer("r?", "c"),)


# ------------------------------------------------------------------------------------------ user paths, limit, policy

def test_user_path_and_jsonl(tmp_path):
    p = write(tmp_path, "mine.json", [CF_OK, dict(CF_OK, case_id=8, target_new="German")])
    out = load_dataset("counterfact-val", path=p)
    assert out.path == p and [r.target_new for r in out] == ["English", "German"] and out[1].case_id == 8
    jl = write(tmp_path, "mine.jsonl", json.dumps(CF_OK) + "\n\n" + json.dumps(CF_OK) + "\n")
    assert len(load_file(jl, "counterfact")) == 2


def test_lmedit_data_env_moves_staged_dir(tmp_path, monkeypatch):
    (tmp_path / "knowns").mkdir()
    write(tmp_path / "knowns", "known_1000.json", [{"known_id": 5, "subject": "X", "attribute": "Y",
                                                    "prompt": "X is in"}])
    monkeypatch.setenv("LMEDIT_DATA", str(tmp_path))
    out = load_dataset("knowns")
    assert len(out) == 1 and out[0].case_id == 5
    monkeypatch.setenv("LMEDIT_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="LMEDIT_DATA"):
        load_dataset("knowns")


@needs_data
def test_limit():
    assert len(load_dataset("counterfact-edit", limit=5)) == 5
    assert load_dataset("counterfact-edit", limit=0) == []
    assert len(load_dataset("knowns", limit=10**6)) == 1209
    # limit counts returned requests: the invalid records 534/723 are skipped, not counted
    out = load_dataset("zsre-mend-train", limit=600, skip_invalid=True)
    assert len(out) == 600 and [i for i, _ in out.skipped] == [534]
    with pytest.raises(ValueError):
        load_dataset("knowns", limit=-1)


def test_subject_policy(tmp_path):
    meta: dict = {}
    assert resolve_subject("Danielle Darrieux", "The tongue of Danielle Darrieux is", meta) == "Danielle Darrieux"
    assert meta == {}
    assert resolve_subject("danielle darrieux", "The tongue of Danielle Darrieux is", meta) == "Danielle Darrieux"
    assert meta["subject_original"] == "danielle darrieux"
    meta = {}
    assert resolve_subject("Someone Else", "The tongue of Danielle Darrieux is", meta) is None
    assert "does not occur" in meta["subject_note"]
    p = write(tmp_path, "cf.json", [dict(CF_OK, subject="DANIELLE DARRIEUX"), dict(CF_OK, subject="Nobody")])
    a, b = load_counterfact(p)
    assert a.subject == "Danielle Darrieux" and b.subject is None and b.meta["subject_original"] == "Nobody"


def test_template_prompt_is_filled(tmp_path):
    p = write(tmp_path, "cf.json", [dict(CF_OK, prompt="The mother tongue of {} is")])
    r = load_counterfact(p)[0]
    assert r.prompt == CF_OK["prompt"] and r.meta["template"] == "The mother tongue of {} is"


def test_knowedit_locality_kinds_from_user_file(tmp_path):
    rec = {"prompt": "The father of X is", "subject": "X", "target_new": "Y", "ground_truth": ["Z", "Zed"],
           "locality": {"Relation_Specificity": [{"prompt": "X was born in", "ground_truth": [["Paris", "Paree"]]}],
                        "Forgetfulness": [{"prompt": "X's sibling is", "ground_truth": [[], []]}]},
           "portability": {"Logical_Generalization": [{"prompt": "Y's child is", "ground_truth": "X"}],
                           "Subject_Aliasing": [{"prompt": ["The father of Xavier is", "Xavier's father is"],
                                                 "ground_truth": "Y"}]}}
    r = load_knowedit(write(tmp_path, "ke.json", [rec]))[0]
    assert r.target_true == "Z" and r.meta["target_true_aliases"] == ["Z", "Zed"]
    assert r.locality == (PromptAnswer("X was born in", "Paris"),)
    assert r.meta["locality_aliases"] == [["Paris", "Paree"]]
    assert r.meta["locality_dropped"] == [("Forgetfulness", "X's sibling is")]
    assert r.meta["portability_kinds"] == ["Logical_Generalization", "Subject_Aliasing", "Subject_Aliasing"]


# ------------------------------------------------------------------------------------------ registry and CLI

def test_unknown_dataset_suggests_close_names():
    with pytest.raises(UnknownDataset, match="counterfact-edit"):
        load_dataset("counterfact_edit")
    with pytest.raises(ValueError, match="unknown format"):
        load_file("x.json", "counterfakt")


def test_register_dataset(tmp_path):
    p = write(tmp_path, "reg.json", [CF_OK])
    register_dataset("test-reg-cf", load_counterfact, p, expected_count=1, description="t", overwrite=True)
    try:
        assert "test-reg-cf" in list_datasets() and len(load_dataset("test-reg-cf")) == 1
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("test-reg-cf", load_counterfact, p)
        assert get_dataset("test-reg-cf").answers == "short"
        assert register_dataset("test-reg-cf", load_counterfact, p, answers="long", overwrite=True).answers == "long"
        with pytest.raises(ValueError, match="answers"):
            register_dataset("test-reg-cf", load_counterfact, p, answers="essay", overwrite=True)
        # passages and chat responses are long answers, facts short
        assert [get_dataset(n).answers for n in ("knowedit-wikibio-test", "knowedit-convsent-test",
                                                 "wise-hallucination-edit", "knowedit-zsre", "counterfact-edit",
                                                 "knowedit-sanitation-test")] == ["long"] * 3 + ["short"] * 3
    finally:
        from lmedit.data import registry
        registry._REGISTRY.pop("test-reg-cf", None)


@needs_data
def test_cli_list_and_show():
    from typer.testing import CliRunner

    from lmedit.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["data", "list"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    for name in ("counterfact-edit", "knowns", "pitfalls-round-hard"):
        assert name in res.output
    res = runner.invoke(app, ["data", "show", "knowns", "--n", "2"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    assert len(shown) == 2 and shown[0]["subject"] == raw("knowns/known_1000.json")[0]["subject"]
    res = runner.invoke(app, ["data", "show", "counterfact-edit", "--n", "1", "--path",
                              str(DATA / "counterfact/easyedit_counterfact-val.json")])
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["case_id"] == 10
    res = runner.invoke(app, ["data", "show", "knowwns"])
    assert res.exit_code == 2 and "knowns" in res.output


def test_describe_counts_what_a_slice_measures():
    from lmedit.data.base import describe

    reqs = [EditRequest("The mother of Ada Lovelace is", "Anne", subject="Ada Lovelace",
                        rephrase_prompts=("Ada Lovelace's mother is",),
                        locality=(PromptAnswer("The father of ADA LOVELACE is", "Byron"),
                                  PromptAnswer("The capital of France is", "Paris")),
                        portability=(PromptAnswer("The mother of Anne's daughter is", "Anne"),)),
            EditRequest("Who wrote Hamlet?", "Marlowe")]
    assert describe(reqs) == {"requests": 2, "with subject": 1, "with target_true": 0, "rephrase prompts": 1,
                              "locality prompts": 2, "locality prompts naming the subject": 1,
                              "portability prompts": 1, "portability prompts naming the subject": 0}


def test_knowedit_zsre_locality_is_about_the_edited_subject():
    # the statistic the KnowEdit table's notes rely on (docs/BENCHMARKS.md)
    from lmedit.data.base import describe

    counts = describe(load_dataset("knowedit-zsre", limit=100))
    assert counts["locality prompts"] == counts["locality prompts naming the subject"] == 200


def test_convsent_locality_passes_over_unusable_neighbours(tmp_path):
    recs = [{"ent": "A", "pos": ["a+"], "neg": ["a-"]}, {"ent": "A", "pos": ["x"], "neg": ["y"]},
            {"ent": "B", "pos": [], "neg": ["b-"]}, "not a record", {"ent": "C", "pos": ["c+"], "neg": ["c-"]}]
    f = tmp_path / "blender.json"
    f.write_text(json.dumps(recs))
    got = load_file(f, "knowedit-convsent", skip_invalid=True)
    assert [r.case_id for r in got] == [0, 1, 4] and [i for i, _ in got.skipped] == [2, 3]
    assert [r.meta["locality_entity"] for r in got] == ["C", "C", "A"]
    assert got[0].locality[0] == PromptAnswer("What do you think of C?", "c+")
    lonely = tmp_path / "one.json"
    lonely.write_text(json.dumps(recs[:1]))
    assert load_file(lonely, "knowedit-convsent")[0].locality == ()
