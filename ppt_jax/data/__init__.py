"""Input pipeline (design.md §6): `config` (the `config.data` defaults and checks), `schema` (the shard
contract), `records` (random access to shards), `augment`, `schedule` (the dataset ratio schedule) and
`pipeline` (tf.data train / eval / test-fragment datasets).

Nothing is imported here: `ppt_jax.data.config` and `schema` must load without TensorFlow."""
