"""Norm of the last MLP's input (what a T-Patcher key is multiplied with) over WikiText tokens, per model:
how far one optimiser step on a patch key moves its pre-activation relative to another model.

    PYTHONPATH=. python scripts/mlp_input_scale.py smollm2-135m qwen2.5-0.5b
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lmedit import ModelAdapter, load_model  # noqa: E402
from lmedit.methods.tpatcher import memory_inputs  # noqa: E402


def main():
    for name in sys.argv[1:] or ["smollm2-135m"]:
        model, tok = load_model(name)
        ad = ModelAdapter(model)
        x = memory_inputs(model, tok, ad.module(ad.mlp_path(-1)), 1024)
        norms = x.norm(dim=1)
        print(f"{name}: layer {ad.n_layers - 1} MLP input norm over {len(x)} tokens: "
              f"median {norms.median():.1f}, 10-90% {norms.quantile(0.1):.1f}-{norms.quantile(0.9):.1f}", flush=True)


if __name__ == "__main__":
    main()
