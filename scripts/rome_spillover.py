"""How much a ROME edit moves the edited layer on *other* subjects' prompts (CounterFact neighbourhood).

    python scripts/rome_spillover.py smollm2-135m 4 --n 20 [--n-tokens 20000] [--set clamp_norm_factor=2]

For each of the first N CounterFact cases: edit with ROME at the given layer, run the case's
neighbourhood prompt, and compare with the unedited model at every position of that prompt:
  mlp  ‖Δ MLP output‖ / ‖MLP output‖   (the output projection the edit changed)
  res  ‖Δ block output‖ / ‖block output‖ (the residual stream after the edited block)
Prints the median over cases of the per-prompt maximum over positions, and the fraction of
neighbourhood prompts that still prefer their true answer. In a pre-norm block (Llama, Qwen2,
SmolLM2) the MLP output is added to the residual as it is; Gemma 3 normalises it first
(post_feedforward_layernorm), so a change that is small next to the residual can still be large
next to the MLP output, which the norm then brings to full size.
"""
import argparse
import json
import os
import statistics

import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lmedit import EditRequest, Editor, load_model  # noqa: E402
from lmedit.evaluate.scoring import teacher_forced  # noqa: E402
from lmedit.models.adapters import ModelAdapter  # noqa: E402
from lmedit.paths import shared_data_dir  # noqa: E402


@torch.no_grad()
def layer_outputs(model, tok, adapter, layer, prompt):
    """(MLP output, block output) at every position of `prompt`, each (T, d)."""
    seen = {}
    hooks = [adapter.mlp_out(layer).register_forward_hook(lambda m, i, o: seen.__setitem__("mlp", o[0])),
             adapter.block(layer).register_forward_hook(
                 lambda m, i, o: seen.__setitem__("res", (o[0] if isinstance(o, tuple) else o)[0]))]
    try:
        model(**tok(prompt, return_tensors="pt"))
    finally:
        for h in hooks:
            h.remove()
    return seen["mlp"].float(), seen["res"].float()


def rel_change(after, before):
    return ((after - before).norm(dim=-1) / before.norm(dim=-1).clamp(min=1e-6)).max().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("layer", type=int)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--n-tokens", type=int, default=20_000)
    ap.add_argument("--set", action="append", default=[], help="ROME hparam override key=value")
    args = ap.parse_args()
    model, tok = load_model(args.model)
    adapter = ModelAdapter(model)
    recs = json.loads((shared_data_dir() / "counterfact" / "easyedit_counterfact-edit.json").read_text())[:args.n]
    overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    hp = {"layers": [args.layer], "mom2_n_tokens": args.n_tokens, "prefixes": ["Note: ", "I read this. "],
          "v_steps": 12, "v_stop_loss": 0.2, **overrides}
    ed = Editor(model, tok)
    mlp, res, kept = [], [], []
    for r in recs:
        req = EditRequest(prompt=r["prompt"], subject=r["subject"], target_new=r["target_new"],
                          target_true=r["ground_truth"])
        before = layer_outputs(model, tok, adapter, args.layer, r["locality_prompt"])
        h = ed.apply([req], method="rome", hparams=hp)
        try:
            after = layer_outputs(model, tok, adapter, args.layer, r["locality_prompt"])
            sa, sb = (teacher_forced(model, tok, [r["locality_prompt"]], [t])[0].nll
                      for t in (r["locality_ground_truth"], r["target_new"]))
        finally:
            h.restore()
        mlp.append(rel_change(after[0], before[0]))
        res.append(rel_change(after[1], before[1]))
        kept.append(sa < sb)
    eff = ed.resolve_hparams(ed.method("rome"), hp)
    print(f"{args.model} ROME layer {args.layer} clamp {eff.clamp_norm_factor} KL {eff.kl_factor} "
          f"stats {eff.mom2_n_tokens} {overrides}, {len(recs)} CounterFact neighbourhood prompts: "
          f"median max relative change: mlp {statistics.median(mlp):.3f}, res {statistics.median(res):.3f}; "
          f"neighbourhood {sum(kept) / len(kept):.2f}", flush=True)


if __name__ == "__main__":
    main()
