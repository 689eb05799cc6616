"""Book §4.5-§4.6: the course's BPE tokenizer as a real CLIPTokenizer, the text encoder, the latent U-Net.

Files under test: diffcourse/latent/tokenizer.py, text_encoder.py, unet.py.
"""
from __future__ import annotations

import pytest
import torch

from diffcourse.data.shapes import make_shapes
from diffcourse.latent.text_encoder import build_text_encoder, encode_prompt, prompt_ids
from diffcourse.latent.tokenizer import (BOS, EOS, MAX_LENGTH, apply_bpe, build_tokenizer, caption_words, learn_bpe,
                                         unknown_words)
from diffcourse.latent.unet import LatentTextDenoiser, build_unet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_every_caption_word_is_one_token(tok):
    vocab = tok.get_vocab()
    for w in caption_words():
        ids = tok(w).input_ids
        assert tok.convert_ids_to_tokens(ids) == [BOS, w + "</w>", EOS], \
            f"{w!r} should be one token between BOS and EOS, got {tok.convert_ids_to_tokens(ids)}"
    assert vocab[BOS] == 0 and vocab[EOS] == 1 and tok.pad_token == EOS and tok.model_max_length == MAX_LENGTH


def test_captions_round_trip(tok):
    _, captions, _ = make_shapes(40, seed=3)
    for c in captions:
        ids = tok(c).input_ids
        assert len(ids) == len(c.split()) + 2, f"{c!r}: {len(ids)} tokens for {len(c.split())} words"
        assert tok.decode(ids, skip_special_tokens=True) == c


def test_unknown_words_fall_back_to_letters(tok):
    tokens = tok.convert_ids_to_tokens(tok("a zebra").input_ids)
    assert tokens == [BOS, "a</w>", "z", "e", "b", "r", "a</w>", EOS], tokens
    assert unknown_words(tok, "a small zebra at the top") == ["zebra"]


def test_learned_merges_are_deterministic_and_agree_with_the_tokenizers_library(tok):
    words = caption_words()
    merges = learn_bpe(words)
    assert merges == learn_bpe(list(reversed(words))), "BPE should not depend on the order of the word list"
    assert all(apply_bpe(w, merges) == (w + "</w>",) for w in words)
    g = torch.Generator().manual_seed(0)
    letters = "abcdefghilmnoprstuvy"
    for _ in range(60):                              # random strings: ours vs the Rust BPE inside CLIPTokenizer
        n = int(torch.randint(1, 9, (), generator=g))
        word = "".join(letters[i] for i in torch.randint(len(letters), (n,), generator=g).tolist())
        theirs = tok.convert_ids_to_tokens(tok(word).input_ids)[1:-1]
        assert list(apply_bpe(word, merges)) == theirs, f"{word!r}: ours {apply_bpe(word, merges)}, CLIP {theirs}"


def test_prompt_ids_pad_like_the_pipeline(tok):
    ids = prompt_ids(tok, ["a small red circle at the top left", ""])
    assert ids.shape == (2, MAX_LENGTH) and ids.dtype == torch.long
    assert ids[1].tolist() == [0] + [1] * (MAX_LENGTH - 1), f"the empty prompt is BOS then EOS padding: {ids[1]}"
    assert ids[0, 9:].eq(1).all() and ids[0, 0] == 0


def test_text_encoder_is_causal_so_padding_does_not_reach_the_words(tok):
    torch.manual_seed(0)
    te = build_text_encoder(tok).eval()
    ids = prompt_ids(tok, ["a small red circle at the top left"])          # 10 real tokens, then padding
    other = ids.clone()
    other[0, 12:] = 5                                                      # different "padding"
    with torch.no_grad():
        a, b = encode_prompt(te, ids), encode_prompt(te, other)
    assert a.shape == (1, MAX_LENGTH, 64), f"(N, L, d) expected, got {tuple(a.shape)}"
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6), "tokens before the change should not see it"
    assert not torch.allclose(a[:, 12:], b[:, 12:]), "tokens after the change should"


def test_unet_cross_attends_at_every_level_and_the_prompt_matters(tok):
    torch.manual_seed(0)
    model = LatentTextDenoiser(build_text_encoder(tok), build_unet()).eval()
    levels = list(model.unet.down_blocks) + [model.unet.mid_block] + list(model.unet.up_blocks)
    assert all(getattr(b, "attentions", None) for b in levels), "every level should have cross-attention (eq. 4.9)"
    z, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 900])
    with torch.no_grad():
        a = model(z, t, prompt_ids(tok, ["a small red circle at the top left"] * 2))
        b = model(z, t, prompt_ids(tok, ["a large blue square in the center"] * 2))
    assert a.shape == z.shape and not torch.allclose(a, b), "eps_hat should depend on the prompt"
