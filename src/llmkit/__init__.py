"""llmkit: build, pretrain, finetune, evaluate and serve language models."""

__version__ = "0.1.0"

from llmkit.config import ModelConfig  # noqa: E402  (config imports no torch: cheap)
from llmkit.errors import LLMKitError  # noqa: E402

__all__ = ["ModelConfig", "LLMKitError", "__version__", "pipeline"]


def __getattr__(name: str):
    """`llmkit.pipeline` (llmkit.pipelines.pipeline), imported on first use: `import llmkit` stays
    cheap (no torch)."""
    if name == "pipeline":
        from llmkit.pipelines import pipeline

        return pipeline
    raise AttributeError(f"module 'llmkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"pipeline"})
