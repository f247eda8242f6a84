"""scripts/knowedit_grid.sh with a stand-in for `lmedit`: which cells run, what gets published, and which
cell's unedited-model observations the others reuse."""
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Records each `bench run` call, writes a finished run (pre.jsonl only when it observed the unedited model
# itself) and fails for the method "bad".
FAKE_LMEDIT = r"""#!/usr/bin/env bash
echo "$*" >> "$CALLS"
[ "$2" = table ] && { echo "TABLE ${*:3}"; exit 0; }
out="" method="" pre=""
while [ $# -gt 0 ]; do
  case "$1" in --out) out=$2;; --method) method=$2;; --pre-from) pre=$2;; esac; shift
done
[ "$method" = bad ] && exit 1
mkdir -p "$out"
echo '{"method": "'"$method"'"}' > "$out/config.json"
echo '{}' > "$out/cases.jsonl"
[ -z "$pre" ] && echo '{"pre": 1}' > "$out/pre.jsonl"
echo '# report' > "$out/report.md"
echo '{"complete": true}' > "$out/summary.json"
"""


@pytest.fixture
def grid(tmp_path):
    fake = tmp_path / "lmedit"
    fake.write_text(FAKE_LMEDIT)
    fake.chmod(0o755)
    calls = tmp_path / "calls.txt"

    def run(methods: str, subsets: str = "zsre"):
        calls.write_text("")
        env = dict(os.environ, LMEDIT=str(fake), CALLS=str(calls), RUNS=str(tmp_path / "runs"),
                   PUBLISH=str(tmp_path / "pub"), METHODS=methods, SUBSETS=subsets, MODELS="smollm2-135m")
        p = subprocess.run(["bash", str(REPO / "scripts/knowedit_grid.sh")], env=env, capture_output=True,
                           text=True, check=True)
        runs = [line.split() for line in calls.read_text().splitlines() if line.startswith("bench run")]
        return p, runs

    return tmp_path, run


def _arg(call, name):
    return call[call.index(name) + 1] if name in call else None


def test_first_cell_observes_the_unedited_model_and_the_others_reuse_it(grid):
    tmp, run = grid
    p, runs = run("ft-m rome")
    assert [_arg(c, "--method") for c in runs] == ["ft-m", "rome"]
    assert _arg(runs[0], "--pre-from") is None
    assert _arg(runs[1], "--pre-from").endswith("pub/smollm2-135m-zsre-ft-m")
    pub = tmp / "pub"
    assert sorted(os.listdir(pub / "smollm2-135m-zsre-ft-m")) == ["config.json", "pre.jsonl", "report.md", "summary.json"]
    assert sorted(os.listdir(pub / "smollm2-135m-zsre-rome")) == ["config.json", "report.md", "summary.json"]
    assert not list(pub.glob("*.tmp*"))  # no half-published folder is left behind
    assert "TABLE" in p.stdout and str(pub / "smollm2-135m-zsre-rome") in p.stdout


def test_published_cells_are_skipped_in_a_fresh_checkout(grid):
    tmp, run = grid
    run("ft-m rome")
    subprocess.run(["rm", "-rf", str(tmp / "runs")], check=True)  # ignored run folders are gone
    _, runs = run("ft-m rome memit")
    assert [_arg(c, "--method") for c in runs] == ["memit"]
    assert _arg(runs[0], "--pre-from").endswith("pub/smollm2-135m-zsre-ft-m")
    _, runs = run("ft-m rome memit")
    assert runs == []


def test_a_later_method_can_supply_the_observations(grid):
    """The source of the unedited model's observations need not come first in METHODS."""
    tmp, run = grid
    run("rome")
    _, runs = run("ft-m rome")
    assert _arg(runs[0], "--pre-from").endswith("pub/smollm2-135m-zsre-rome")


def test_a_failed_cell_is_reported_not_published_and_the_grid_goes_on(grid):
    tmp, run = grid
    p, runs = run("bad ft-m", subsets="zsre wiki-recent")
    assert [(_arg(c, "--method"), _arg(c, "--dataset")) for c in runs] == [
        ("bad", "knowedit-zsre"), ("ft-m", "knowedit-zsre"), ("bad", "knowedit-wiki-recent"),
        ("ft-m", "knowedit-wiki-recent")]
    assert "FAILED" in p.stderr
    assert sorted(os.listdir(tmp / "pub")) == ["smollm2-135m-wiki-recent-ft-m", "smollm2-135m-zsre-ft-m"]
    # each subset observes its own unedited model
    assert _arg(runs[3], "--pre-from") is None
    assert json.loads((tmp / "pub/smollm2-135m-zsre-ft-m/summary.json").read_text())["complete"] is True


def test_an_unfinished_run_is_resumed(grid):
    tmp, run = grid
    half = tmp / "runs/smollm2-135m-zsre-ft-m"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")
    _, runs = run("ft-m")
    assert "--resume" in runs[0]


def _tables_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("knowedit_tables", REPO / "scripts" / "knowedit_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_benchmarks_doc_tables_are_the_published_cells():
    # docs/BENCHMARKS.md's KnowEdit tables are regenerated from docs/results/knowedit, never edited by hand
    assert _tables_script().main(["--check"]) == 0


def test_the_tables_block_needs_both_markers_once():
    mod = _tables_script()
    with pytest.raises(ValueError, match="once"):
        mod.splice("no markers here", "block")
    doc = f"a\n{mod.BEGIN}\nold\n{mod.END}\nb"
    assert mod.splice(doc, "new") == f"a\n{mod.BEGIN}\nnew\n{mod.END}\nb"
