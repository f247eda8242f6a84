"""Tiny randomly initialised models of every supported family, built from configs (no download)."""
import torch
from transformers import AutoModelForCausalLM

H, I, L, V = 32, 64, 3, 128  # hidden, MLP width, layers, vocab


def _configs():
    from transformers import (GPT2Config, GPTJConfig, GPTNeoXConfig, Gemma3TextConfig, LlamaConfig, MistralConfig,
                              Qwen2Config)
    common = dict(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128)
    return {
        "llama": LlamaConfig(**common),
        "mistral": MistralConfig(**common),
        "qwen2": Qwen2Config(**common),
        "gemma3_text": Gemma3TextConfig(**common, head_dim=8),
        "gpt2": GPT2Config(vocab_size=V, n_embd=H, n_inner=I, n_layer=L, n_head=4, n_positions=128),
        "gptj": GPTJConfig(vocab_size=V, n_embd=H, n_inner=I, n_layer=L, n_head=4, n_positions=128, rotary_dim=4),
        "gpt_neox": GPTNeoXConfig(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=L,
                                  num_attention_heads=4, max_position_embeddings=128),
    }


FAMILIES = list(_configs())


def tiny_model(family: str):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_configs()[family])
    model.eval()
    return model
