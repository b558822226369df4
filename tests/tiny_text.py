"""An offline CLIP tokenizer and a tiny random CLIP text encoder, for text-conditional pipelines
built in tests (no hub: the vocabulary is CLIP's byte alphabet, one token per character)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte-to-character table (the base of a byte-level BPE vocabulary)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def clip_text_parts(root: Path, hidden_size: int = 12, seed: int = 4):
    """``(tokenizer, text_encoder)``: a CLIPTokenizer of 10 tokens written under ``root`` and a
    one-layer CLIPTextModel with ``hidden_size`` features."""
    import transformers

    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (root / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per character
    tokenizer = transformers.CLIPTokenizer(
        str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=10
    )
    torch.manual_seed(seed)
    config = transformers.CLIPTextConfig(
        vocab_size=len(tokens), hidden_size=hidden_size, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=10,
        bos_token_id=len(tokens) - 2, eos_token_id=len(tokens) - 1, pad_token_id=len(tokens) - 1,
    )  # fmt: skip
    return tokenizer, transformers.CLIPTextModel(config).eval()
