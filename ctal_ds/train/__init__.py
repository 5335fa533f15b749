"""Pre-training engine: DeepSpeed trainer, checkpoints, tracking (docs/training.md)."""
