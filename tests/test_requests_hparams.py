from dataclasses import dataclass, field

import pytest

from lmedit import EditRequest, InvalidHparams, InvalidRequest
from lmedit.hparams import HParams, load_hparams
from lmedit.methods.ft import FTHparams


def test_request_normalises_fields():
    r = EditRequest(prompt="The capital of France is", target_new="Rome", subject="France",
                    rephrase_prompts="France's capital is", locality=[("Japan's capital is", "Tokyo")])
    assert r.rephrase_prompts == ("France's capital is",)
    assert r.locality[0].answer == "Tokyo"


@pytest.mark.parametrize("kwargs, msg", [
    (dict(prompt="", target_new="x"), "prompt"),
    (dict(prompt="p", target_new="   "), "target_new"),
    (dict(prompt="The capital of France is", target_new="Rome", subject="Germany"), "does not occur"),
    (dict(prompt="p", target_new="x", locality=[{"prompt": "q"}]), "locality"),
    (dict(prompt="p", target_new="x", portability=[{"prompt": "q", "answer": ""}]), "answer"),
    (dict(prompt="p", target_new="x", rephrase_prompts=["ok", ""]), "rephrase"),
    (dict(prompt="p", target_new="x", target_true=""), "target_true"),
])
def test_request_validation_errors(kwargs, msg):
    with pytest.raises(InvalidRequest, match=msg):
        EditRequest(**kwargs)


def test_request_from_dict_aliases_and_unknown_keys():
    r = EditRequest.from_dict({"prompt": "p", "target": "x", "ground_truth": "y", "rephrase_prompt": "q"})
    assert (r.target_new, r.target_true, r.rephrase_prompts) == ("x", "y", ("q",))
    with pytest.raises(InvalidRequest, match="unknown request field"):
        EditRequest.from_dict({"prompt": "p", "target_new": "x", "colour": "red"})
    with pytest.raises(InvalidRequest, match="missing"):
        EditRequest.from_dict({"prompt": "p"})
    with pytest.raises(InvalidRequest, match="JSON object"):
        EditRequest.from_dict(["p", "x"])


def test_require_subject():
    with pytest.raises(InvalidRequest, match="needs a subject"):
        EditRequest(prompt="p", target_new="x").require_subject("rome")


def test_round_trip_to_dict():
    r = EditRequest(prompt="a b", target_new="c", subject="a", locality=[("q", "r")], portability=[("s", "t")])
    assert EditRequest.from_dict(r.to_dict()) == r


@dataclass
class _HP(HParams):
    layers: list[int] = field(default_factory=lambda: [1])
    lr: float = 0.1
    steps: int = 3
    flag: bool = False
    name: str | None = None

    def validate(self):
        self.check(self.lr > 0, "lr must be > 0")


def test_hparams_convert_by_field_type():
    hp = _HP.from_dict({"layers": 5, "lr": "5e-1", "steps": "7", "flag": "true"})
    assert hp.layers == [5] and hp.lr == 0.5 and hp.steps == 7 and hp.flag is True


@pytest.mark.parametrize("bad, msg", [
    ({"colour": 1}, "unknown hparam"),
    ({"lr": "fast"}, "must be float"),
    ({"steps": 2.5}, "must be int"),
    ({"lr": -1.0}, "lr must be > 0"),
    ({"flag": "maybe"}, "must be bool"),
])
def test_hparams_reject_bad_values(bad, msg):
    with pytest.raises(InvalidHparams, match=msg):
        _HP.from_dict(bad)


def test_load_hparams_layers_defaults_yaml_file_and_overrides(tmp_path):
    hp = load_hparams(FTHparams, "ft-m", "llama")
    assert hp.objective == "target"
    f = tmp_path / "hp.yaml"
    f.write_text("lr: 1.0e-3\nnum_steps: 3\n")
    hp = load_hparams(FTHparams, "ft-m", "llama", overrides={"num_steps": 4}, path=f)
    assert hp.lr == 1e-3 and hp.num_steps == 4
    f.write_text("- not a mapping\n")
    with pytest.raises(InvalidHparams, match="mapping"):
        load_hparams(FTHparams, "ft-m", "llama", path=f)


def test_every_packaged_hparams_file_loads_for_its_method():
    """A typo in a packaged yaml (a field the method does not have, a value it rejects) fails here,
    not in a user's run on that model family."""
    from lmedit.hparams import HPARAMS_DIR
    from lmedit.methods import get_method

    files = sorted(HPARAMS_DIR.glob("*/*.yaml"))
    assert any(f.name == "qwen2.yaml" for f in files)
    for f in files:
        method = get_method(f.parent.name)
        load_hparams(method.hparams_cls, f.parent.name, f.stem if f.stem != "default" else None)
