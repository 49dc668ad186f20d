"""Input pipeline: shard schema, augmentations, multi-dataset mixing, eval fragments (design.md §6)."""

from ppt_jax.data.pipeline import (
    TrainIterator,
    batch_metrics,
    check_config,
    default_config,
    eval_dataset,
    fragment_dataset,
    steps_per_epoch,
    train_dataset,
)

__all__ = ["TrainIterator", "batch_metrics", "check_config", "default_config", "eval_dataset",
           "fragment_dataset", "steps_per_epoch", "train_dataset"]
