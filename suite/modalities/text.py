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

from suite.errors import UserError
from suite.modalities.base import Adapter
from suite.registry import MODALITIES

_TENSOR_KEYS = ("input_ids", "attention_mask", "labels")


def _require_text_model(model):
    if not (hasattr(model, "embed") and hasattr(model, "tokenizer")):
        raise UserError(f"the text modality needs a TextClassifier-like model (with .embed and .tokenizer), "
                        f"got {type(model).__name__}")
    return model


@MODALITIES.register("text")
class TextClassification(Adapter):
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
        import torch.nn.functional as F

        return F.cross_entropy(output.float(), batch["labels"], reduction=reduction)

    def correct(self, output, batch):
        return output.argmax(dim=1) == batch["labels"]

    # --- attack surface: word embeddings -------------------------------------------------------
    def surface(self, model, batch):
        import torch

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
