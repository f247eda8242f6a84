"""Standard deviation of each layer's MLP output projection weight, per model: how large a weight
change an absolute bound (FT-L's norm_constraint) allows relative to the weights themselves.

    PYTHONPATH=. python scripts/weight_scale.py smollm2-135m qwen2.5-0.5b gemma3-270m
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lmedit import ModelAdapter, load_model  # noqa: E402


def main():
    for name in sys.argv[1:] or ["smollm2-135m"]:
        model, _ = load_model(name)
        ad = ModelAdapter(model)
        stds = [float(ad.mlp_out_weight(l).detach().float().std()) for l in range(ad.n_layers)]
        print(f"{name}: mlp_out weight std min {min(stds):.4f} median {sorted(stds)[len(stds) // 2]:.4f} "
              f"max {max(stds):.4f} over {ad.n_layers} layers", flush=True)


if __name__ == "__main__":
    main()
