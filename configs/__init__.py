"""Experiment configs (ml_collections): `python -m ppt_jax.main --config=configs/<name>.py`."""
