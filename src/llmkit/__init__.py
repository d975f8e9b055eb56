"""llmkit: build, pretrain, finetune, evaluate and serve language models."""

__version__ = "0.1.0"

from llmkit.config import ModelConfig  # noqa: E402  (config imports no torch: cheap)
from llmkit.errors import LLMKitError  # noqa: E402

__all__ = ["ModelConfig", "LLMKitError", "__version__"]
