"""EditRequest: what to change, and what to check it against. Validated on construction."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


class InvalidRequest(ValueError):
    """A request that cannot be edited; raised before anything in the model changes."""


@dataclass(frozen=True)
class PromptAnswer:
    prompt: str
    answer: str

    def __post_init__(self):
        for name in ("prompt", "answer"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise InvalidRequest(f"{name} must be a non-empty string, got {v!r}")


def _pairs(items, what: str) -> tuple[PromptAnswer, ...]:
    out = []
    for i, it in enumerate(items or ()):
        if isinstance(it, PromptAnswer):
            out.append(it)
        elif isinstance(it, dict) and set(it) >= {"prompt", "answer"}:
            out.append(PromptAnswer(it["prompt"], it["answer"]))
        elif isinstance(it, (list, tuple)) and len(it) == 2:
            out.append(PromptAnswer(*it))
        else:
            raise InvalidRequest(f"{what}[{i}] must be {{'prompt': ..., 'answer': ...}}, got {it!r}")
    return tuple(out)


@dataclass(frozen=True)
class EditRequest:
    """One fact to edit.

    prompt      text the model completes, e.g. "The Eiffel Tower is located in the city of"
    target_new  the completion it should give after the edit, e.g. "Rome"
    subject     the entity whose fact changes ("The Eiffel Tower"); locate-then-edit methods need it
    target_true the completion it gave before (optional; CounterFact-style scores use it)
    rephrase_prompts, locality, portability: what the edit is measured against
    """

    prompt: str
    target_new: str
    subject: str | None = None
    target_true: str | None = None
    rephrase_prompts: tuple[str, ...] = ()
    locality: tuple[PromptAnswer, ...] = ()
    portability: tuple[PromptAnswer, ...] = ()
    case_id: str | int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidRequest(f"prompt must be a non-empty string, got {self.prompt!r}")
        if not isinstance(self.target_new, str) or not self.target_new.strip():
            raise InvalidRequest(f"target_new must be a non-empty string (prompt {self.prompt!r})")
        if self.target_true is not None and (not isinstance(self.target_true, str) or not self.target_true.strip()):
            raise InvalidRequest(f"target_true, when given, must be a non-empty string (prompt {self.prompt!r})")
        if self.subject is not None:
            if not isinstance(self.subject, str) or not self.subject.strip():
                raise InvalidRequest(f"subject, when given, must be a non-empty string (prompt {self.prompt!r})")
            if self.subject not in self.prompt:
                raise InvalidRequest(f"subject {self.subject!r} does not occur in prompt {self.prompt!r}")
        reph = self.rephrase_prompts
        if isinstance(reph, str):
            reph = (reph,)
        reph = tuple(reph or ())
        for r in reph:
            if not isinstance(r, str) or not r.strip():
                raise InvalidRequest(f"rephrase prompts must be non-empty strings, got {r!r}")
        object.__setattr__(self, "rephrase_prompts", reph)
        object.__setattr__(self, "locality", _pairs(self.locality, "locality"))
        object.__setattr__(self, "portability", _pairs(self.portability, "portability"))

    def require_subject(self, method: str) -> None:
        if not self.subject:
            raise InvalidRequest(f"method {method!r} needs a subject; request {self.prompt!r} has none")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EditRequest":
        if not isinstance(d, dict):
            raise InvalidRequest(f"a request must be a JSON object, got {type(d).__name__}")
        aliases = {"target": "target_new", "ground_truth": "target_true", "rephrase_prompt": "rephrase_prompts",
                   "rephrase": "rephrase_prompts"}
        d = {aliases.get(k, k): v for k, v in d.items()}
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InvalidRequest(f"unknown request field(s) {sorted(unknown)}; known: {sorted(known)}")
        missing = {"prompt", "target_new"} - set(d)
        if missing:
            raise InvalidRequest(f"request is missing {sorted(missing)}: {d!r}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["locality"] = [asdict(p) for p in self.locality]
        d["portability"] = [asdict(p) for p in self.portability]
        d["rephrase_prompts"] = list(self.rephrase_prompts)
        return d
