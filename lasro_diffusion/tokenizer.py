"""A CLIP tokenizer built from a word list, for models we build ourselves (the toy world, tiny
test pipelines): nothing can be downloaded, and a real CLIP vocabulary is 49k tokens.

The vocabulary holds the 256 byte-level symbols of GPT-2 / CLIP, their end-of-word forms, and
each given word as one token; merges spell each word left to right, so any text still tokenizes
(byte fallback). `save_pretrained` writes it like any CLIP tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import CLIPTokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: 256 printable stand-ins for the 256 byte values
    (transformers' models/clip/tokenization_clip.py: bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def word_clip_tokenizer(words: Iterable[str], max_length: int) -> CLIPTokenizer:
    """A byte-level BPE CLIP tokenizer whose vocab has each of `words` as one token."""
    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for word in sorted(dict.fromkeys(words), key=len, reverse=True):  # long words first: "an" in "triangle"
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        cur = pieces[0]
        for nxt in pieces[1:]:
            merge = (cur, nxt)
            if merge not in merges:
                merges.append(merge)
            cur = cur + nxt
            if cur not in vocab_list:
                vocab_list.append(cur)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
