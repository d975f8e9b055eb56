"""The training loop and its parts (optimizer, schedule, logging, processes)."""

from llmkit.training.loop import TrainConfig, Trainer

__all__ = ["TrainConfig", "Trainer"]
