"""Benchmark runs on the real small model: protocols, resume after a kill, malformed input, compare."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmedit.bench import RunConfig, RunError, compare, run
from lmedit.bench.run import case_rows, read_jsonl

pytestmark = pytest.mark.slow
FAST = {"num_steps": 3}


def cfg(**kw):
    base = dict(method="ft-m", dataset="counterfact-edit", n=3, hparams=FAST, generation=False, progress=False)
    return RunConfig(**{**base, **kw})


def test_single_protocol_writes_cases_summary_report_and_plot(tmp_path):
    s = run(cfg(), tmp_path / "r")
    assert s["complete"] and s["cases_done"] == 3
    assert {"tf_reliability", "cf_es", "cf_ns", "tf_locality"} <= set(s["post"])
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["config"]["protocol"] == "single" and saved["environment"]["torch"].startswith("2.13")
    assert saved["hparams"]["num_steps"] == 3
    assert (tmp_path / "r" / "plots" / "scores.png").stat().st_size > 1000
    assert "tf_reliability" in (tmp_path / "r" / "report.md").read_text()
    with pytest.raises(RunError, match="already holds a run"):
        run(cfg(), tmp_path / "r")
    with pytest.raises(RunError, match="settings differ"):
        run(cfg(n=4), tmp_path / "r", resume=True)


def test_batch_protocol_and_compare(tmp_path):
    s = run(cfg(protocol="batch", batch_size=2), tmp_path / "b")
    assert s["cases_done"] == 3
    rows = compare([tmp_path / "b", tmp_path / "b"])
    assert rows[0][0] == "metric" and any(r[0] == "tf_reliability" for r in rows)
    from lmedit.bench.report import table

    md = table([tmp_path / "b"])
    assert "### counterfact-edit on smollm2-135m" in md and "| ft-m | batch (B=2) | 3 | " in md
    assert "Edit Succ." in md and "Fluency" not in md  # no generation in this run: no fluency column
    pre = s["pre"]["tf_reliability"]
    assert f"| (unedited) | - | 3 | {100 * pre:.1f} |" in md  # the baseline row; locality has none: "-"
    with pytest.raises(ValueError, match="not a run directory"):
        table([tmp_path / "nothing-here"])


def test_sequential_interrupted_then_resumed_loses_nothing(tmp_path, monkeypatch):
    c = cfg(protocol="sequential", n=4, checkpoints=[2], general_tasks=[])
    calls = _crash_on(monkeypatch, "ft-m", 3)
    with pytest.raises(KeyboardInterrupt):
        run(c, tmp_path / "s")
    assert [r["edits"] for r in read_jsonl(tmp_path / "s" / "checkpoints.jsonl")] == [2]
    assert json.loads((tmp_path / "s" / "state" / "state.json").read_text())["edits_done"] == 2
    s = run(c, tmp_path / "s", resume=True)
    assert calls["n"] == 5  # edits 3 and 4 only: the first two came back from the saved state
    assert s["complete"] and [r["edits"] for r in s["checkpoints"]] == [2, 4]
    assert [r["index"] for r in case_rows(tmp_path / "s")] == [0, 1, 2, 3]
    # per-edit scores at both checkpoints -> the first cohort (edits 1-2) is followed to the end
    assert [r["edits"] for r in read_jsonl(tmp_path / "s" / "checkpoint_cases.jsonl")] == [2, 4]
    first = s["retention"]["tf_reliability"][0]
    assert first["cohort"] == [1, 2] and first["at"] == [2, 4]
    assert "## Forgetting" in (tmp_path / "s" / "report.md").read_text()
    assert (tmp_path / "s" / "plots" / "retention_tf_reliability.png").is_file()


def test_sequential_run_saves_its_weights_between_checkpoints(tmp_path, monkeypatch):
    """With no checkpoint before the end, a kill still loses at most `save_every` edits."""
    c = cfg(protocol="sequential", n=5, checkpoints=[], save_every=2)
    calls = _crash_on(monkeypatch, "ft-m", 4)
    with pytest.raises(KeyboardInterrupt):
        run(c, tmp_path / "s")
    saved = json.loads((tmp_path / "s" / "state" / "state.json").read_text())
    assert saved["edits_done"] == 2 and saved["edit_seconds"] > 0
    assert not (tmp_path / "s" / "checkpoints.jsonl").exists()
    s = run(c, tmp_path / "s", resume=True)
    assert calls["n"] == 7  # edits 3, 4 and 5 after the crash
    assert s["complete"] and [r["edits"] for r in s["checkpoints"]] == [5]
    # the seconds spent on the two saved edits still count
    assert s["checkpoints"][0]["edit_seconds"] > saved["edit_seconds"]
    with pytest.raises(ValueError, match="save_every"):
        cfg(protocol="sequential", save_every=-1)


def _crash_on(monkeypatch, method: str, call: int) -> dict:
    """Make the method's apply raise KeyboardInterrupt on its `call`-th call; counts the calls."""
    from lmedit.methods import get_method

    cls = type(get_method(method))
    calls, original = {"n": 0}, cls.apply

    def apply(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(cls, "apply", apply)
    return calls


@pytest.mark.parametrize("method,hparams", [
    ("grace", {"num_steps": 3}),
    ("ike", {}),
    # edit 2 replays edit 1 (restored from the saved state) in the first side memory; edit 3 opens a second
    ("wise", {"num_steps": 3, "irrelevant_records": 0, "shards_per_memory": 2}),
    ("t-patcher", {"num_steps": 3, "memory_tokens": 256}),
    ("lora", {"num_steps": 3}),
    ("melo", {"num_steps": 3}),
])
def test_sequential_memory_method_resumes_from_its_saved_memory(tmp_path, monkeypatch, method, hparams):
    """GRACE (codebook records), IKE (stored facts), WISE (side memories), T-Patcher (patch neurons) and
    LoRA/MELO (peft adapters, MELO's router keys) keep their edits outside the weights; the run saves
    them, and a resumed run ends where an uninterrupted one does."""
    c = cfg(method=method, protocol="sequential", n=3, checkpoints=[1], hparams=hparams)
    whole = run(c, tmp_path / "whole")
    calls = _crash_on(monkeypatch, method, 2)
    with pytest.raises(KeyboardInterrupt):
        run(c, tmp_path / "g")
    assert [r["edits"] for r in read_jsonl(tmp_path / "g" / "checkpoints.jsonl")] == [1]
    assert json.loads((tmp_path / "g" / "state" / "state.json").read_text())["edits_done"] == 1
    s = run(c, tmp_path / "g", resume=True)
    assert calls["n"] == 4  # edits 2 and 3 only: edit 1 came back from the saved memory
    assert s["complete"] and [r["edits"] for r in s["checkpoints"]] == [1, 3]
    assert s["post"] == whole["post"]


def test_sequential_method_without_resume_state_restarts_on_resume(tmp_path, monkeypatch):
    """A method that keeps edits outside the weights and cannot save them (here LoRA with its
    `resume_state` taken away) restarts its sequence on --resume without keeping the earlier
    attempt's checkpoints."""
    from lmedit.methods.base import EditMethod
    from lmedit.methods.lora import Lora

    monkeypatch.setattr(Lora, "resume_state", EditMethod.resume_state)
    c = cfg(method="lora", protocol="sequential", n=3, checkpoints=[1], hparams={"num_steps": 2})
    calls = _crash_on(monkeypatch, "lora", 2)
    with pytest.raises(KeyboardInterrupt):
        run(c, tmp_path / "g")
    assert [r["edits"] for r in read_jsonl(tmp_path / "g" / "checkpoints.jsonl")] == [1]
    assert not (tmp_path / "g" / "state").exists()
    s = run(c, tmp_path / "g", resume=True)
    assert calls["n"] == 5  # the whole sequence again
    assert s["complete"] and [r["edits"] for r in s["checkpoints"]] == [1, 3]


@pytest.fixture
def observed(monkeypatch):
    """Sizes of the observe() calls a run makes from now on."""
    import importlib

    run_mod = importlib.import_module("lmedit.bench.run")  # the module (lmedit.bench.run is also the function)
    sizes, real = [], run_mod.observe

    def counting(model, tok, reqs, ecfg):
        sizes.append(len(reqs))
        return real(model, tok, reqs, ecfg)

    monkeypatch.setattr(run_mod, "observe", counting)
    return sizes


def test_sequential_run_reuses_another_runs_pre_edit_observations(tmp_path, observed):
    run(cfg(protocol="sequential", n=3), tmp_path / "a")
    observed.clear()
    s = run(cfg(protocol="sequential", n=2, hparams={"num_steps": 2}, pre_from=str(tmp_path / "a")), tmp_path / "b")
    assert s["complete"] and observed == [2]  # only the post-edit observation of its 2 cases
    assert read_jsonl(tmp_path / "b" / "pre.jsonl") == read_jsonl(tmp_path / "a" / "pre.jsonl")[:2]
    with pytest.raises(RunError, match="cf_scores"):
        run(cfg(protocol="sequential", n=2, cf_scores=False, pre_from=str(tmp_path / "a")), tmp_path / "c")
    with pytest.raises(RunError, match="answers"):
        run(cfg(protocol="sequential", n=2, answers="long", pre_from=str(tmp_path / "a")), tmp_path / "c")
    with pytest.raises(RunError, match="not a run directory"):
        run(cfg(protocol="sequential", n=2, pre_from=str(tmp_path)), tmp_path / "d")
    with pytest.raises(RunError, match="observed at once"):  # batched differently: not reused
        run(cfg(protocol="single", n=2, pre_from=str(tmp_path / "a")), tmp_path / "e")
    assert not (tmp_path / "c").exists() and not (tmp_path / "e").exists()  # refused runs leave nothing


def test_single_edit_runs_keep_and_reuse_pre_edit_observations(tmp_path, observed):
    run(cfg(n=2, hparams={"num_steps": 2}), tmp_path / "a")
    assert sorted(r["index"] for r in read_jsonl(tmp_path / "a" / "pre.jsonl")) == [0, 1]
    observed.clear()
    # another method on the same cases: only post-edit observations, and the same pre-edit scores
    b = run(cfg(n=2, method="ft-l", hparams={"num_steps": 2}, pre_from=str(tmp_path / "a")), tmp_path / "b")
    assert b["complete"] and observed == [1, 1]
    pre = lambda d: [r["pre"] for r in read_jsonl(d / "cases.jsonl")]  # noqa: E731
    assert pre(tmp_path / "b") == pre(tmp_path / "a")
    assert not (tmp_path / "b" / "pre.jsonl").exists()


def test_killed_process_resumes_from_its_last_case(tmp_path):
    out = tmp_path / "k"
    args = [sys.executable, "-m", "lmedit.cli", "bench", "run", "--out", str(out), "--method", "ft-m",
            "--dataset", "counterfact-edit", "--n", "6", "--set", "num_steps=2", "--no-generation"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(read_jsonl(out / "cases.jsonl")) < 2:
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = read_jsonl(out / "cases.jsonl")
    assert 2 <= len(before) < 6
    r = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = case_rows(out)
    assert [x["index"] for x in rows] == list(range(6))  # none lost, none duplicated
    assert rows[: len(before)] == before


def test_malformed_dataset_names_file_and_record(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "a", "target_new": "b", "subject": "a"}, {"prompt": "a", "target_new": ""}]))
    from lmedit.data import DatasetError

    with pytest.raises(DatasetError, match="record 1"):
        run(cfg(data_path=str(bad)), tmp_path / "m")
    s = run(cfg(data_path=str(bad), skip_invalid=True), tmp_path / "m2")
    assert s["cases_done"] == 1 and s["dataset"]["skipped"] == 1


def test_run_config_validation():
    with pytest.raises(ValueError, match="protocol"):
        RunConfig(protocol="parallel")
    with pytest.raises(ValueError, match="sharded"):
        RunConfig(protocol="sequential", workers=2)
    with pytest.raises(ValueError, match="answers"):
        RunConfig(answers="medium")
    # the kind of answers comes from the dataset unless given, also for saved runs that predate the setting
    assert RunConfig(dataset="knowedit-wikibio-test").answers == "long"
    assert RunConfig.from_dict({"dataset": "knowedit-zsre"}).answers == "short"
    assert RunConfig(dataset="knowedit-convsent-test", answers="short").answers == "short"


def test_workers_shard_cases_over_processes(tmp_path):
    s = run(cfg(n=4, workers=2), tmp_path / "w")
    assert s["complete"]
    assert sorted(p.name for p in (tmp_path / "w").glob("cases*.jsonl")) == ["cases.w0.jsonl", "cases.w1.jsonl"]
    assert [r["index"] for r in case_rows(tmp_path / "w")] == [0, 1, 2, 3]


def test_ray_shards_on_a_local_ray_instance(tmp_path):
    ray = pytest.importorskip("ray")  # installed by `make test` (the [ray] extra)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        s = run(cfg(n=2, workers=2, ray="auto"), tmp_path / "ray")
    finally:
        ray.shutdown()
    assert s["complete"] and [r["index"] for r in case_rows(tmp_path / "ray")] == [0, 1]


def test_retention_follows_each_cohort_to_later_checkpoints():
    from lmedit.bench.report import retention

    cc = [{"edits": 1, "scores": {"0": {"tf_reliability": 1.0}}},
          {"edits": 3, "scores": {"0": {"tf_reliability": 0.5}, "1": {"tf_reliability": 1.0},
                                  "2": {"tf_reliability": 0.0}}}]
    rows = retention(cc)
    assert rows == [{"cohort": [1, 1], "at": [1, 3], "score": [1.0, 0.5]},
                    {"cohort": [2, 3], "at": [3], "score": [0.5]}]


def test_speed_benchmark_times_each_method_and_undoes_its_edits(tmp_path, monkeypatch):
    from lmedit.bench.speed import markdown, measure

    monkeypatch.setenv("LMEDIT_STATS_DIR", str(tmp_path))  # the stand-in's statistics stay out of the real cache
    rows = measure("tiny-llama", methods=("rome", "memit"), batch_sizes=(1, 2), rome_edits=2, stats_tokens=2000,
                   hparams={"v_steps": 2}, progress=False)
    assert [(r.method, r.batch, r.edits) for r in rows] == [("rome", 1, 2), ("memit", 1, 1), ("memit", 2, 2)]
    assert all(r.seconds > 0 and r.peak_mb > 0 and r.threads == __import__("torch").get_num_threads() for r in rows)
    table = markdown(rows).splitlines()
    assert len(table) == 2 + len(rows) and "| tiny-llama | cpu | float32 |" in table[2]
