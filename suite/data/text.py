"""Text datasets and the collate that tokenizes a batch (dynamic padding)."""
from __future__ import annotations

from typing import Any, Sequence

import torch


class TextCollate:
    """DataLoader collate: a list of (text, label) pairs -> a padded batch dict.

    A class rather than a closure so that DataLoader workers can pickle it.
    """

    def __init__(self, tokenizer: Any, max_length: int = 128):
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    def __call__(self, items: Sequence[tuple[str, int]]) -> dict:
        texts = [t for t, _ in items]
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": torch.tensor([int(y) for _, y in items], dtype=torch.long),
            "text": texts,
        }


class TextDataset(torch.utils.data.Dataset):
    """Sentences and integer labels; items are (text, label)."""

    def __init__(self, texts: Sequence[str], labels: Sequence[int]):
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        self.texts = list(texts)
        self.labels = [int(y) for y in labels]

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.texts[i], self.labels[i]
