"""Text classification: token ids from a Hugging Face tokenizer, cross-entropy, accuracy.

Batches are dicts made by `TextCollate` (dynamic padding: each batch is padded to its longest
sentence): `input_ids` and `attention_mask` (N, L) long tensors, `labels` (N,), and `text`, the raw
sentences (word-level attacks such as TextAttack's recipes need them).

The model is a `TextClassifier`: a sequence classifier together with the tokenizer and maximum length
that feed it, so that everything which must turn text into logits (the data collate, TextAttack) uses
exactly the same tokenization.

Attack surface: the input (word) embeddings of `input_ids`, shape (N, L, D), unbounded (`bounds` is
None); padding positions are masked out. AT and the gradient attacks perturb it as in FreeLB (Zhu et
al., ICLR 2020): PGD in embedding space, linf or l2, the l2 norm taken over a whole example. The
model adds position embeddings (and LayerNorm) on top of the perturbed word embeddings itself.

This module imports nothing from `transformers` at import time: the adapter works with any module
that follows the `TextClassifier` contract, and the suite imports without the `text` extra.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from suite.errors import UserError
from suite.modalities.base import Adapter
from suite.registry import MODALITIES


class TextClassifier(nn.Module):
    """A Hugging Face sequence-classification model plus its tokenizer and maximum length.

    `forward` returns logits; it takes `input_ids` or `inputs_embeds` (word embeddings, before the
    model adds position embeddings). The tokenizer is a plain attribute (not a module), so the state
    dict holds the network's weights only, under `net.`.
    """

    def __init__(self, net: nn.Module, tokenizer: Any, max_length: int = 128):
        super().__init__()
        self.net = net
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None) -> torch.Tensor:
        if inputs_embeds is not None:
            return self.net(inputs_embeds=inputs_embeds, attention_mask=attention_mask).logits
        return self.net(input_ids=input_ids, attention_mask=attention_mask).logits

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The word embeddings the model would look up for `input_ids` (with gradient to the table)."""
        return self.net.get_input_embeddings()(input_ids)

    def encode(self, texts: Sequence[str]) -> dict:
        """Tokenize with dynamic padding and truncation at `max_length`: the one tokenization used
        for training, evaluation and TextAttack's queries."""
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")


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


_TENSOR_KEYS = ("input_ids", "attention_mask", "labels")


def _require_text_model(model: nn.Module) -> nn.Module:
    if not (hasattr(model, "embed") and hasattr(model, "tokenizer")):
        raise UserError(f"the text modality needs a TextClassifier-like model (with .embed and .tokenizer), "
                        f"got {type(model).__name__}")
    return model


@MODALITIES.register("text")
class TextClassification(Adapter):
    name = "text"
    metric = "accuracy"
    bounds = None  # embeddings are unbounded

    # --- batches -------------------------------------------------------------------------------
    def to_device(self, batch, device):
        out = dict(batch)
        for k in _TENSOR_KEYS:
            out[k] = batch[k].to(device, non_blocking=True)
        return out

    def batch_size(self, batch):
        return int(batch["labels"].shape[0])

    def subset(self, batch, index):
        out = {k: batch[k][index.to(batch[k].device)] for k in _TENSOR_KEYS}
        out["text"] = [batch["text"][i] for i in index.tolist()]
        return out

    # --- model, loss, metric -------------------------------------------------------------------
    def forward(self, model, batch):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def loss(self, output, batch, reduction="mean"):
        return F.cross_entropy(output.float(), batch["labels"], reduction=reduction)

    def correct(self, output, batch):
        return output.argmax(dim=1) == batch["labels"]

    # --- attack surface: word embeddings -------------------------------------------------------
    def surface(self, model, batch):
        with torch.no_grad():
            return _require_text_model(model).embed(batch["input_ids"]).detach()

    def forward_surface(self, model, batch, x):
        # Re-anchor the (detached) surface to the live embedding table: the value is x, but the
        # gradient also reaches the embedding weights, as in FreeLB, where inputs_embeds =
        # embed(ids) + delta. Without this, AT would never train the word embeddings. Inside an
        # attack the weights do not require gradients, so this costs one embedding lookup.
        e = model.embed(batch["input_ids"])
        if e.requires_grad:
            x = e + (x - e.detach())
        return model(inputs_embeds=x, attention_mask=batch["attention_mask"])

    def surface_mask(self, batch):
        # (N, L, 1): perturb real tokens (special tokens included, as FreeLB does), never padding
        return batch["attention_mask"].unsqueeze(-1).float()
