"""Text models: a Hugging Face sequence classifier together with the tokenizer that feeds it."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


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
