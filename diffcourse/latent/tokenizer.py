"""A byte-pair-encoding vocabulary written by the course, as a real ``CLIPTokenizer`` (book §4.5).

CLIP's tokenizer splits a lower-cased prompt into words, spells each word as symbols (its letters,
the last one marked ``</w>``: ``r e d</w>``), then applies *merges* -- pairs of symbols to join,
in the order they were learned -- until no listed pair is left. :func:`learn_bpe` learns such
merges the textbook way (Sennrich et al., 2016): count adjacent pairs over the word list, join the
most frequent, repeat; here it runs until every caption word is one symbol, so every caption word
is one token, and an unknown word still has its letters to fall back on.

:func:`build_tokenizer` writes the vocabulary and merges in the files CLIP uses (``vocab.json``,
``merges.txt``) and loads them with transformers' ``CLIPTokenizer``: the pipeline of §4.8 uses it
unchanged. Ids: 0 ``<|startoftext|>``, 1 ``<|endoftext|>`` (also the padding, as in CLIP), then
the letters, then one id per merge::

    tok = build_tokenizer()
    tok("a small red circle at the top left").input_ids   # [0, a, small, red, circle, at, the, top, left, 1]
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

__all__ = ["BOS", "EOS", "MAX_LENGTH", "caption_words", "learn_bpe", "apply_bpe", "build_vocab", "write_tokenizer",
           "build_tokenizer", "unknown_words"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 20          # tokens per prompt with BOS and EOS: the longest two-shape caption has 17 words
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def caption_words() -> list[str]:
    """Every word the shapes captions use (book §4.5): :data:`diffcourse.data.shapes.VOCAB` without its specials."""
    from ..data.shapes import VOCAB

    return [w for w in VOCAB if not w.startswith("<")]


def _spell(word: str) -> tuple[str, ...]:
    """'red' -> ('r', 'e', 'd</w>'): a word as CLIP's initial symbols (book §4.5)."""
    return (*word[:-1], word[-1] + "</w>")


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Join every occurrence of ``pair`` in ``symbols``, left to right (book §4.5)."""
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def learn_bpe(words: list[str], counts: dict[str, int] | None = None) -> list[tuple[str, str]]:
    """Learn merges until every word in ``words`` is one symbol (book §4.5, byte-pair encoding).

    Each round joins the most frequent adjacent pair (weighted by ``counts``, default 1 per word),
    ties broken alphabetically so the result is the same on every run. Returns the merges in order.
    """
    counts = counts or {}
    spelled = {w: _spell(w) for w in dict.fromkeys(words)}
    merges = []
    while any(len(s) > 1 for s in spelled.values()):
        pairs = Counter()
        for w, s in spelled.items():
            for pair in zip(s, s[1:]):
                pairs[pair] += counts.get(w, 1)
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        spelled = {w: _merge(s, best) for w, s in spelled.items()}
    return merges


def apply_bpe(word: str, merges: list[tuple[str, str]]) -> tuple[str, ...]:
    """Tokenise one word with learned merges, as CLIP does: join the earliest-learned pair present, repeat
    (book §4.5). Returns its symbols, e.g. ``('red</w>',)`` or ``('z', 'e', 'b', 'r', 'a</w>')``."""
    rank = {pair: i for i, pair in enumerate(merges)}
    symbols = _spell(word)
    while len(symbols) > 1:
        pairs = [p for p in zip(symbols, symbols[1:]) if p in rank]
        if not pairs:
            break
        symbols = _merge(symbols, min(pairs, key=rank.__getitem__))
    return symbols


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token -> id: BOS, EOS, the 26 letters and 26 word-final letters, then one symbol per merge (book §4.5)."""
    tokens = [BOS, EOS, *_LETTERS, *(c + "</w>" for c in _LETTERS)]
    tokens += [a + b for a, b in merges if a + b not in tokens]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def write_tokenizer(folder: str | Path, words: list[str] | None = None, max_length: int = MAX_LENGTH) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer config for ``words`` (book §4.5). Returns the folder."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = learn_bpe(words or caption_words())
    (folder / "vocab.json").write_text(json.dumps(build_vocab(merges)) + "\n", encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    tok = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                        model_max_length=max_length, pad_token=EOS)
    tok.save_pretrained(str(folder))
    return folder


def build_tokenizer(words: list[str] | None = None, max_length: int = MAX_LENGTH, folder: str | Path | None = None):
    """A ``transformers.CLIPTokenizer`` over the course's BPE vocabulary, built in ``folder`` (a temporary
    folder by default) and loaded from it, offline (book §4.5)."""
    import tempfile

    from transformers import CLIPTokenizer

    if folder is None:
        with tempfile.TemporaryDirectory() as tmp:
            return CLIPTokenizer.from_pretrained(str(write_tokenizer(tmp, words, max_length)), local_files_only=True)
    return CLIPTokenizer.from_pretrained(str(write_tokenizer(folder, words, max_length)), local_files_only=True)


def unknown_words(tokenizer, prompt: str) -> list[str]:
    """The words of ``prompt`` that are not one token of ``tokenizer``'s vocabulary (book §4.5).

    Such words still tokenise (letter by letter), but the model never saw them: the pipeline of §4.8
    refuses them with a clear error.
    """
    vocab = tokenizer.get_vocab()
    return [w for w in prompt.lower().split() if w + "</w>" not in vocab]
