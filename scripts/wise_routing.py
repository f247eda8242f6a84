"""Which side memory answers each edit prompt after T sequential WISE edits (ZsRE eval cases 0..T-1).

    PYTHONPATH=. python scripts/wise_routing.py 10 '{"replay": true, "merge": "linear"}'

For every edit prompt: the memory that holds it, its running activation score over each memory's
threshold (ratio > 1 = the memory fires), the memory the older rule picked (highest ratio) and the
one the current rule picks (the newest memory that fires), and the teacher-forced accuracy of the
new target. Training does not depend on the rule, so both columns come from one run.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

from lmedit import Editor, load_model  # noqa: E402
from lmedit.data import load_dataset  # noqa: E402
from lmedit.evaluate.scoring import teacher_forced  # noqa: E402
from lmedit.methods.wise import WiseMemory  # noqa: E402

n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
hp = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
model, tok = load_model("smollm2-135m")
editor = Editor(model, tok)
reqs = list(load_dataset("zsre-mend-eval", limit=n))
for r in reqs:
    editor.apply([r], method="wise", hparams=hp)
(wrapper,) = [m for m in model.modules() if isinstance(m, WiseMemory)]
owner = {}
for k, mem in enumerate(wrapper.memories):
    for sh in mem.shards:
        owner[sh.id] = k  # shard ids follow the edit order here: one shard per edit
acc = teacher_forced(model, tok, [r.prompt for r in reqs], [r.target_new for r in reqs])
print(f"{len(wrapper.memories)} memories, thresholds {[round(m.eps, 1) for m in wrapper.memories]}")
print("| edit | memory | ratio per memory | highest ratio picks | newest firing picks | tf accuracy |")
print("| --- | --- | --- | --- | --- | --- |")
wrong_old = wrong_new = 0
for i, (r, a) in enumerate(zip(reqs, acc)):
    got = {}
    h = wrapper.base.register_forward_hook(lambda _m, inp, _o: got.__setitem__("x", inp[0].detach()))
    try:
        with torch.no_grad():
            model(**tok(r.prompt, return_tensors="pt"))
    finally:
        h.remove()
    ratios = [float(wrapper.scores(m.delta, got["x"][0]).max() / m.eps) for m in wrapper.memories]
    old = max(range(len(ratios)), key=lambda k: ratios[k]) if max(ratios) > 1 else None
    new = max((k for k, v in enumerate(ratios) if v > 1), default=None)
    wrong_old += old != owner[i]
    wrong_new += new != owner[i]
    print(f"| {i} | {owner[i]} | {[round(v, 2) for v in ratios]} | {old} | {new} | {a.accuracy:.2f} |")
print(f"prompts answered by another memory than their own: highest ratio {wrong_old}, newest firing {wrong_new}")
