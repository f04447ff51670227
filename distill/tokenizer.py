"""Word-level instruction tokenizer built locally from the suites' instructions (no hub download).

    tok = WordTokenizer.build(["pick up the coke can", "open the top drawer"])
    ids, mask = tok.batch_encode(["pick up the can"], max_len=32)  # (1, 5) int64, (1, 5) bool

The vocabulary is a plain list of strings stored in the checkpoint's ``config.json``; index 0 is
the padding token and index 1 the unknown-word token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch

from tasks.errors import UserInputError

PAD = "[PAD]"
UNK = "[UNK]"
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Lower-case ``text`` and split it into words and single punctuation marks."""
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Maps instruction words to ids; unknown words map to ``[UNK]`` (id 1), padding is id 0."""

    pad_id = 0
    unk_id = 1

    def __init__(self, vocab: Sequence[str]):
        vocab = list(vocab)
        if vocab[:2] != [PAD, UNK]:
            raise UserInputError(f"vocabulary must start with {[PAD, UNK]}, got {vocab[:2]}")
        if len(set(vocab)) != len(vocab):
            dupes = sorted({w for w in vocab if vocab.count(w) > 1})
            raise UserInputError(f"vocabulary has duplicate entries: {dupes}")
        self.vocab = vocab
        self._ids = {w: i for i, w in enumerate(vocab)}

    @classmethod
    def build(cls, instructions: Iterable[str]) -> WordTokenizer:
        """Vocabulary of every word in ``instructions``, sorted, after the two special tokens."""
        words = sorted({w for text in instructions for w in split_words(text)})
        return cls([PAD, UNK, *words])

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, max_len: int) -> list[int]:
        """Token ids of ``text``, truncated to ``max_len``."""
        return [self._ids.get(w, self.unk_id) for w in split_words(text)][:max_len]

    def batch_encode(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids (B, T) int64 and mask (B, T) bool (False = padding); T = longest, at least 1."""
        return pad_ids([self.encode(t, max_len) for t in texts], self.pad_id)


def pad_ids(encoded: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) int64 and mask (B, T) bool (False = padding) of token-id lists; T = longest,
    at least 1. Shared by :class:`WordTokenizer` and :class:`distill.hf_vla.HFTokenizer`."""
    width = max(1, max((len(e) for e in encoded), default=1))
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(encoded), width), dtype=torch.bool)  # (B, T)
    for row, e in enumerate(encoded):
        ids[row, : len(e)] = torch.tensor(list(e), dtype=torch.long)
        mask[row, : len(e)] = True
    return ids, mask
