"""`llmkit models`: the architecture presets with their exact sizes.

Apart from the preset data (presets/__init__.py) because it builds each model on the meta
device to count its parameters, and the data must stay importable without torch.
"""

from __future__ import annotations

from typing import Optional

from llmkit.config import ModelConfig
from llmkit.model import count_params
from llmkit.presets import PRESETS


def list_models(family: Optional[str] = None) -> None:
    """List the architecture presets with their parameter counts.

    Args:
        family: only presets whose name contains this text (e.g. "qwen").
    """
    rows = []
    for name in PRESETS:
        if family and family.lower() not in name:
            continue
        cfg = ModelConfig.from_name(name)
        heads = f"{cfg.n_head}/{cfg.kv_heads}"
        layers = f"{cfg.n_encoder_layer}+{cfg.n_layer}" if cfg.is_seq2seq else str(cfg.n_layer)
        rows.append((name, f"{count_params(cfg):,}", cfg.kind, layers,
                     str(cfg.n_embd), heads, str(cfg.block_size), cfg.hf_repo or "-"))
    header = ("preset", "parameters", "kind", "layers", "d_model", "heads/kv", "context", "hugging face repo")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(c.rjust(w) if i == 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
