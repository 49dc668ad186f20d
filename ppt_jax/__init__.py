"""ppt-jax: Point Prompt Training (multi-dataset 3D semantic segmentation) in JAX/Flax."""
