import json

import pytest
from typer.testing import CliRunner

from lmedit.cli import app

runner = CliRunner()


def test_methods_and_models_list():
    r = runner.invoke(app, ["methods"])
    assert r.exit_code == 0 and "ft-m" in r.output
    r = runner.invoke(app, ["models", "list"])
    assert r.exit_code == 0 and "smollm2-135m" in r.output


@pytest.mark.parametrize("args, msg", [
    (["edit", "--method", "nope", "--prompt", "a", "--target", "b"], "unknown method"),
    (["edit", "--prompt", "a"], "give --prompt and --target"),
    (["edit", "--prompt", "a", "--target", "b", "--set", "lr"], "key=value"),
])
def test_edit_bad_input_exits_2_with_a_message(args, msg):
    r = runner.invoke(app, args)
    assert r.exit_code == 2
    assert msg in r.output


def test_requests_file_errors_name_the_record(tmp_path):
    f = tmp_path / "reqs.json"
    f.write_text(json.dumps([{"prompt": "a", "target_new": "b"}, {"prompt": "a", "target_new": ""}]))
    r = runner.invoke(app, ["edit", "--requests", str(f)])
    assert r.exit_code == 2 and "record 1" in r.output
    f.write_text("{not json")
    r = runner.invoke(app, ["edit", "--requests", str(f)])
    assert r.exit_code == 2 and "cannot read requests" in r.output


@pytest.mark.slow
def test_edit_json_output_on_the_real_model(tmp_path):
    out = tmp_path / "res.json"
    r = runner.invoke(app, ["edit", "--model", "smollm2-135m", "--method", "ft-m",
                            "--prompt", "The Eiffel Tower is located in the city of", "--target", "Rome",
                            "--locality", "The capital of Japan is=>Tokyo", "--set", "num_steps=10",
                            "--json", "--output", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["method"] == "ft-m" and data["hparams"]["num_steps"] == 10
    assert data["summary"]["post"]["tf_reliability"] >= data["summary"]["pre"]["tf_reliability"]
    assert json.loads(r.stdout)["model"] == "smollm2-135m"


def test_data_stats_json_and_bad_input():
    r = runner.invoke(app, ["data", "stats", "knowedit-wiki-recent", "-n", "100", "--json"])
    assert r.exit_code == 0
    counts = json.loads(r.output)
    assert counts["requests"] == 100 and counts["locality prompts"] == counts["locality prompts naming the subject"] > 0
    r = runner.invoke(app, ["data", "stats", "no-such-dataset"])
    assert r.exit_code == 2 and "error" in r.output
    r = runner.invoke(app, ["data", "stats", "knowedit-zsre", "-n", "-1"])
    assert r.exit_code == 2 and "--n must be >= 0" in r.output
