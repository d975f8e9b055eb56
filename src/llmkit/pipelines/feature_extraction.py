"""feature-extraction: the model's final hidden state at every token of a text.

    "a text" -> [[[h_0 ...], [h_1 ...], ...]]   (1 x tokens x hidden size, nested lists)

As transformers' FeatureExtractionPipeline (the base model's `last_hidden_state`, with the
tokenizer's special tokens), for encoders and decoders alike; `return_tensors=True` gives a
(1, T, d) tensor instead. Each input keeps its own length also when batched (transformers pads
a batch's outputs to the batch's longest input).
"""

from __future__ import annotations

from llmkit.pipelines.base import Pipeline


class FeatureExtractionPipeline(Pipeline):
    task = "feature-extraction"
    OPTIONS = {"truncation": False, "return_tensors": False}

    def _run(self, items: list, opts: dict) -> list:
        cut = self.max_length if opts["truncation"] else None
        if self.tokenizer.add_cls_sep or not self.model.cfg.causal:
            encs = [self.encode(t, truncate=cut) for t in items]
        else:  # a decoder: its BOS rule (tokenizer_config's add_bos_token, else the template)
            encs = [_Ids(self.tokenizer.encode(t)[:cut]) for t in items]
        out = self.forward(encs, hidden=True)
        return [h[None] if opts["return_tensors"] else h[None].tolist() for h in out]


class _Ids:
    """Token ids where `forward` wants an Encoded (ids and type ids only)."""

    def __init__(self, ids: list[int]):
        self.ids, self.type_ids = ids, [0] * len(ids)

    def __len__(self) -> int:
        return len(self.ids)
