"""Downloads from the Hugging Face hub: only the files llmkit reads, with clear errors offline."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from llmkit.errors import LLMKitError

# Config, safetensors weights (never pickles), tokenizer and generation defaults.
ALLOW_PATTERNS = [
    "config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json", "added_tokens.json",
]


def download(repo_id: str, out: Optional[str] = None, token: Optional[str] = None, revision: Optional[str] = None) -> Path:
    """Download a model from the Hugging Face hub (config, safetensors, tokenizer files only).

    Args:
        repo_id: the hub repository, e.g. HuggingFaceTB/SmolLM2-135M.
        out: directory to place the files in (default: the hub cache).
        token: access token for gated repos (default: $HF_TOKEN or the cached login).
        revision: branch, tag or commit.
    """
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
        )
    except ImportError as e:  # pragma: no cover - a dependency
        raise LLMKitError(f"huggingface_hub is required for downloads ({e})") from None
    token = token or os.environ.get("HF_TOKEN") or None
    try:
        path = snapshot_download(repo_id, revision=revision, local_dir=out, token=token, allow_patterns=ALLOW_PATTERNS)
    except GatedRepoError:
        raise LLMKitError(f"{repo_id} is gated: accept its license on huggingface.co and pass --token (or set HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise LLMKitError(f"{repo_id}: no such model on the Hugging Face hub (or it is private: pass --token)") from None
    except HFValidationError:
        raise LLMKitError(f"'{repo_id}' is not a valid Hugging Face repo id") from None
    except RevisionNotFoundError:
        raise LLMKitError(f"{repo_id}: no revision '{revision}'") from None
    except LocalEntryNotFoundError:
        raise LLMKitError(f"cannot download {repo_id}: the Hugging Face hub is unreachable (offline?) and it is not in the local cache") from None
    except HfHubHTTPError as e:
        raise LLMKitError(f"cannot download {repo_id}: {str(e).splitlines()[0]}") from None
    except OSError as e:  # connection errors surface as OSError subclasses in some versions
        raise LLMKitError(f"cannot download {repo_id}: {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else 'network error'}") from None
    path = Path(path)
    if not (path / "config.json").exists():
        raise LLMKitError(f"{repo_id}: the repository has no config.json (not a transformers model?)")
    print(f"downloaded {repo_id} to {path}", file=sys.stderr)
    return path


def reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached: False at once with HF_HUB_OFFLINE=1, else a
    TCP connection to the endpoint's host within `timeout` seconds (a closed network then costs
    a few seconds, not the minute of retries a download library spends)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def go_offline() -> None:
    """Make huggingface_hub and datasets (already imported or not) fail at once instead of
    retrying a hub they cannot reach: what HF_HUB_OFFLINE=1 does at import time."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    for module, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
                         ("datasets.config", "HF_DATASETS_OFFLINE")):
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, attr):
            setattr(mod, attr, True)
