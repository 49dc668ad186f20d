"""CLIP text features (`get_text_features`: EOT-token output times the text projection) with Flax.

`FlaxCLIPTextModelWithProjection` holds exactly the text tower and `text_projection`, so it loads those
weights from a full CLIP checkpoint (openai/clip-vit-base-patch16) and ignores the vision tower;
`FlaxCLIPTextModel` would drop the projection. The random tower is a labelled test option only.
"""

import json
import logging
import os

import numpy as np

from ppt_jax.text import bpe, sources

DEFAULT_MODEL = "openai/clip-vit-base-patch16"
RANDOM_LABEL = "random_clip (random, not CLIP)"
RANDOM_MODEL = "tiny CLIP-architecture text tower, seed 0 (random, not CLIP)"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")

log = logging.getLogger(__name__)


def encode_clip(texts, model_path=None, bpe_path=None, work_dir=None):
    """(len(texts), projection_dim) CLIP text features of a local directory or hub id."""
    from transformers import FlaxCLIPTextModelWithProjection

    model_path = model_path or DEFAULT_MODEL
    model, params = sources.load_flax_model(FlaxCLIPTextModelWithProjection, model_path, "the CLIP text encoder",
                                            read_config=text_config)
    tokenizer = _clip_tokenizer(model_path, bpe_path, work_dir)
    log.info("CLIP text encoder %s: %d texts", model_path, len(texts))
    return text_features(model, params, tokenizer, texts)


def encode_random_clip(texts, model_path=None, bpe_path=None, work_dir=None):
    """A seeded, randomly initialised tiny CLIP text tower on byte-level BPE: NOT CLIP, for tests only."""
    from transformers import CLIPTextConfig, FlaxCLIPTextModelWithProjection

    if model_path is not None or bpe_path is not None:
        raise ValueError(f"{RANDOM_LABEL} takes no model_path or bpe_path (got {model_path!r}, {bpe_path!r})")
    if work_dir is None:
        raise ValueError(f"{RANDOM_LABEL} needs a work_dir for its tokenizer files")
    tokenizer = bpe.load_tokenizer(bpe.write_bpe_files([], os.path.join(work_dir, "random_clip_tokenizer")))
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=bpe.CONTEXT_LENGTH, projection_dim=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = FlaxCLIPTextModelWithProjection(config, _do_init=False)
    log.warning("%s: embedding %d texts with a randomly initialised text tower (seed 0)", RANDOM_LABEL, len(texts))
    return text_features(model, random_params(model.params_shape_tree, seed=0), tokenizer, texts)


def random_params(shape_tree, seed):
    """N(0, 0.02) weights, unit LayerNorm scales, zero biases, from numpy's seeded generator.

    Drawn in numpy from the shape tree: running the module's own init would compile its whole
    forward pass just to produce random numbers.
    """
    from flax.traverse_util import flatten_dict, unflatten_dict

    rng = np.random.default_rng(seed)
    def draw(path, leaf):
        if path[-1] == "scale":
            return np.ones(leaf.shape, np.float32)
        if path[-1] == "bias":
            return np.zeros(leaf.shape, np.float32)
        return rng.normal(0.0, 0.02, leaf.shape).astype(np.float32)
    return unflatten_dict({k: draw(k, v) for k, v in sorted(flatten_dict(shape_tree).items())})


def text_config(config_json):
    """The text tower's config; from a full CLIP config, with the projection size of the full model.

    A full CLIPConfig keeps `projection_dim` at the top level; its nested text_config carries its own
    (default 512), which need not match the stored `text_projection`.
    """
    from transformers import CLIPConfig, CLIPTextConfig

    with open(config_json, encoding="utf-8") as f:
        model_type = json.load(f).get("model_type")
    if model_type != "clip":
        return CLIPTextConfig.from_pretrained(config_json)
    full = CLIPConfig.from_pretrained(config_json)
    config = full.text_config
    config.projection_dim = full.projection_dim
    return config


def text_features(model, params, tokenizer, texts):
    """Tokenise to CLIP's context length (as `clip.tokenize`) and return the projected EOT features."""
    enc = tokenizer(list(texts), padding="max_length", max_length=model.config.max_position_embeddings,
                    truncation=False, return_tensors="np")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if ids.shape[1] > model.config.max_position_embeddings:
        too_long = [t for t, m in zip(texts, mask) if m.sum() > model.config.max_position_embeddings]
        raise ValueError(f"texts longer than CLIP's {model.config.max_position_embeddings} tokens: {too_long}")
    _check_pooling_position(model.config, tokenizer, ids, mask)
    def fwd(params, ids, mask):
        return model(ids, attention_mask=mask, params=params).text_embeds

    return sources.run_on_host(fwd, params, ids, mask).astype(np.float32)


def _check_pooling_position(config, tokenizer, ids, mask):
    """The model pools at argmax(id) (legacy configs, eos_token_id == 2) or at the first `eos_token_id`:
    both must land on the tokenizer's EOT token, or the features come from the wrong position."""
    eot = (mask.sum(axis=1) - 1)
    if not np.all(ids[np.arange(len(ids)), eot] == tokenizer.eos_token_id):
        raise ValueError("tokenizer output does not end with its EOT token; not a CLIP tokenizer")
    pooled_at = ids.argmax(axis=1) if config.eos_token_id == 2 else (ids == config.eos_token_id).argmax(axis=1)
    if not np.array_equal(pooled_at, eot):
        raise ValueError(
            f"model config eos_token_id={config.eos_token_id} does not match the tokenizer's EOT id "
            f"{tokenizer.eos_token_id}: the model would pool the wrong token"
        )


def _clip_tokenizer(model_path, bpe_path, work_dir):
    """The model directory's own tokenizer files, else the one derived from CLIP's BPE file."""
    from transformers import CLIPTokenizerFast

    if sources.is_local(model_path):
        model_dir = os.path.expanduser(model_path)
        if any(os.path.isfile(os.path.join(model_dir, n)) for n in _TOKENIZER_FILES):
            return sources.load_tokenizer(CLIPTokenizerFast, model_dir, "the CLIP tokenizer")
        if bpe_path is None:
            looked = ", ".join(os.path.join(model_dir, n) for n in ("tokenizer.json", "vocab.json + merges.txt"))
            raise sources.EncoderUnavailable(
                f"no CLIP tokenizer: looked for {looked}; pass bpe_path=<bpe_simple_vocab_16e6.txt.gz>"
            )
    if bpe_path is not None:
        if work_dir is None:
            raise ValueError("building the CLIP tokenizer from bpe_path needs a work_dir for vocab.json/merges.txt")
        return bpe.clip_tokenizer_from_bpe(bpe_path, os.path.join(work_dir, "clip_bpe_tokenizer"))
    return sources.load_tokenizer(CLIPTokenizerFast, model_path, "the CLIP tokenizer")
