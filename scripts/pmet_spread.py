"""Does PMET's square-root spread overshoot? Compare the shift a PMET edit makes at the last edit layer L
with the shift its target asked for.

    python scripts/pmet_spread.py smollm2-135m --n 10

For each of the first N KnowEdit ZsRE records and each spread rule, optimise the targets as PMET does
(δ_ffn: the change of the MLP output at L, at the subject's last token of the bare prompt), apply the
edit, and read the same position again:
  res/δ  ‖Δ residual after block L‖ / ‖δ_ffn‖   (1 = exactly the asked-for shift; δ_ffn added to the MLP
         output of a pre-norm block is added to the residual as it is)
  cos    cosine between Δ residual and δ_ffn
  mlp/δ  ‖Δ MLP output at L‖ / ‖δ_ffn‖          (what PMET re-reads between layers)
Prints the median over records of each.
"""
import argparse
import os
import statistics

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lmedit import Editor, load_model  # noqa: E402
from lmedit.data import load_dataset  # noqa: E402
from lmedit.hparams import load_hparams  # noqa: E402
from lmedit.methods import get_method, locate  # noqa: E402
from lmedit.models.adapters import ModelAdapter  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=10)
    args = ap.parse_args()
    model, tok = load_model(args.model)
    ad, pmet = ModelAdapter(model), get_method("pmet")
    reqs = load_dataset("knowedit-zsre", limit=args.n)
    for spread in ("sqrt", "linear"):
        hp = load_hparams(pmet.hparams_cls, "pmet", ad.model_type, overrides={"spread": spread})
        L = max(hp.layers)
        paths = [ad.block_path(L), ad.mlp_out_path(L)]
        rows = {"res/δ": [], "cos": [], "mlp/δ": []}
        for r in reqs:
            res = locate.optimise_targets(model, tok, [r], pmet.sites(ad, L, hp), adapter=ad, layer=L,
                                          **hp.target_kwargs())
            delta = res.deltas[ad.mlp_out_path(L)][0]
            before = locate.compute_keys(model, tok, ad, [r], [L], hp.prefixes, outputs=paths).outputs
            edit = Editor(model, tok).edit([r], method="pmet", hparams=hp.to_dict(), evaluate=False)
            after = locate.compute_keys(model, tok, ad, [r], [L], hp.prefixes, outputs=paths).outputs
            edit.restore()
            d_res = (after[paths[0]] - before[paths[0]])[0]
            d_mlp = (after[paths[1]] - before[paths[1]])[0]
            rows["res/δ"].append((d_res.norm() / delta.norm()).item())
            rows["cos"].append(torch.nn.functional.cosine_similarity(d_res, delta, dim=0).item())
            rows["mlp/δ"].append((d_mlp.norm() / delta.norm()).item())
        print(f"{args.model} pmet spread={spread} layers={hp.layers} n={len(reqs)}: "
              + "  ".join(f"{k} {statistics.median(v):.2f}" for k, v in rows.items()), flush=True)


if __name__ == "__main__":
    main()
