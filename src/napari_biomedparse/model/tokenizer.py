"""Offline CLIP byte-pair-encoding tokenizer (the tokenizer of BiomedParse v1's text encoder).

Reproduces ``transformers.CLIPTokenizer.from_pretrained("openai/clip-vit-base-patch32")`` as
called by BiomedParse (``padding="max_length", truncation=True, max_length=77``): lower-cased,
``<|startoftext|>`` (49406) + BPE tokens + ``<|endoftext|>`` (49407), padded with 49407.
The vocabulary ``bpe_simple_vocab_16e6.txt.gz`` ships with the package (MIT licence, see
``BPE_VOCAB_LICENSE.md``); nothing is downloaded.
"""

from __future__ import annotations

import gzip
import html
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch

try:  # the `regex` module gives the exact Unicode classes of CLIP's pattern
    import regex as _re

    _PATTERN = _re.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        _re.IGNORECASE,
    )
except ImportError:  # pragma: no cover - close approximation with the standard library
    _PATTERN = re.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+""",
        re.IGNORECASE,
    )

try:  # CLIP cleans text with ftfy when it is installed; optional
    import ftfy as _ftfy
except ImportError:  # pragma: no cover
    _ftfy = None

__all__ = ["ClipTokenizer", "default_vocab_path"]

BOS_ID = 49406
EOS_ID = 49407


def default_vocab_path() -> Path:
    """Path of the bundled ``bpe_simple_vocab_16e6.txt.gz``."""
    return Path(str(resources.files(__package__).joinpath("bpe_simple_vocab_16e6.txt.gz")))


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _get_pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word[:-1], word[1:]))


def _clean(text: str) -> str:
    if _ftfy is not None:
        text = _ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


class ClipTokenizer:
    """CLIP BPE tokenizer.

    ``tokenizer(["liver", "neoplastic cells"])`` -> ``(input_ids, attention_mask)``, both
    (N, context_length) int64; BOS/EOS included in the mask, pads (id 49407) masked out. Texts
    longer than ``context_length - 2`` BPE tokens are truncated (EOS kept), as the official call.
    """

    def __init__(self, vocab_path: str | Path | None = None, context_length: int = 77) -> None:
        path = Path(vocab_path) if vocab_path is not None else default_vocab_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"CLIP BPE vocabulary not found at {path}; reinstall napari-biomedparse or pass "
                "vocab_path= pointing to bpe_simple_vocab_16e6.txt.gz"
            )
        merges = gzip.open(path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in merges[1 : 49152 - 256 - 2 + 1]]
        self.byte_encoder = _bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab.extend("".join(m) for m in merges)
        vocab.extend(["<|startoftext|>", "<|endoftext|>"])
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.decoder = {i: v for v, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
        self.context_length = context_length
        self.bos_id = self.encoder["<|startoftext|>"]
        self.eos_id = self.encoder["<|endoftext|>"]
        self.pad_id = self.eos_id
        self.vocab_size = len(self.encoder)

    def _bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _get_pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = _get_pairs(word)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without BOS/EOS and without truncation."""
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a str, got {type(text).__name__}")
        ids: list[int] = []
        for token in _PATTERN.findall(_clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(token).split(" "))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Inverse of :meth:`encode` up to cleaning (special tokens dropped)."""
        byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        text = "".join(self.decoder[i] for i in ids if i not in (self.bos_id, self.eos_id))
        raw = bytearray(byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(
        self, texts: str | list[str], context_length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        n_ctx = context_length or self.context_length
        ids = torch.full((len(texts), n_ctx), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(texts), n_ctx), dtype=torch.int64)
        for row, text in enumerate(texts):
            toks = [self.bos_id] + self.encode(text)[: n_ctx - 2] + [self.eos_id]
            ids[row, : len(toks)] = torch.tensor(toks, dtype=torch.int64)
            mask[row, : len(toks)] = 1
        return ids, mask


@lru_cache(maxsize=4)
def get_tokenizer(context_length: int = 77) -> ClipTokenizer:
    """Shared, lazily built tokenizer with the bundled vocabulary."""
    return ClipTokenizer(context_length=context_length)
