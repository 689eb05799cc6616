"""A small CLIP text encoder made here: prompt -> token ids -> one vector per token (book §4.5).

``CLIPTextModel`` is a causal transformer: token and position embeddings, then self-attention blocks
in which a token sees only the tokens before it, then a final LayerNorm::

    c = TextEncoder(tokenize(prompt)) in R^{L x d},   L = 20 tokens, d = 64           (eq. 4.8)

Stable Diffusion's U-Net cross-attends to all L vectors (eq. 4.9), padding included: the prompt is
padded with ``<|endoftext|>`` to L tokens and no attention mask is passed, so the model must be
trained on exactly such padded sequences -- which :func:`prompt_ids` gives. Because attention is
causal, the vectors of the real tokens do not depend on the padding after them.
:data:`SHAPES_TEXT_ENCODER` is the course's size: 2 layers, width 64, 4 heads (about 0.1 M parameters).
"""
from __future__ import annotations

import torch

__all__ = ["SHAPES_TEXT_ENCODER", "build_text_encoder", "prompt_ids", "encode_prompt"]

#: ``CLIPTextConfig`` arguments of the course's text encoder (book §4.5); the vocabulary size and the
#: special ids come from the tokenizer.
SHAPES_TEXT_ENCODER = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    projection_dim=64,
    hidden_act="quick_gelu",                         # CLIP's activation
)


def build_text_encoder(tokenizer, **overrides):
    """A freshly initialised ``transformers.CLIPTextModel`` sized for ``tokenizer`` (book §4.5, eq. 4.8).

    Vocabulary size, maximum length and the BOS/EOS/padding ids are taken from the tokenizer.
    Seed torch before calling it for a repeatable initialisation.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(**dict(SHAPES_TEXT_ENCODER, vocab_size=len(tokenizer),
                                   max_position_embeddings=tokenizer.model_max_length,
                                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id, **overrides))
    return CLIPTextModel(config)


def prompt_ids(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids (N, L) long of ``prompts``, padded to the tokenizer's length L as the pipeline pads them
    (book §4.5). An empty prompt is ``[BOS, EOS, EOS, ...]``: the "no caption" of classifier-free guidance."""
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids                    # (N, L)


def encode_prompt(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    """c = last hidden state of the text encoder: (N, L) ids -> (N, L, d) (book §4.5, eq. 4.8)."""
    return text_encoder(input_ids.to(text_encoder.device))[0]                          # (N, L, d)
