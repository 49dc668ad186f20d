"""Finding and loading pretrained text encoders, failing loudly instead of falling back.

A model is named by a local directory or a Hugging Face hub id. Nothing reaches the network when
HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set. Weights are loaded into a model built with
`_do_init=False`: transformers' default path first initialises every weight at random (about a hundred
small XLA compiles, tens of seconds on a CPU) and then silently keeps random values for any weight
the checkpoint lacks. Here a missing weight is an error: a half-random encoder must never pass for
the real one.
"""

import os
import types

import numpy as np

WEIGHT_FILES = ("flax_model.msgpack", "model.safetensors")


class EncoderUnavailable(RuntimeError):
    """The configured text encoder cannot be loaded; the message says what was looked for."""


def offline():
    """True when the environment forbids hub downloads (read at call time, not at import time)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def is_local(model_path):
    return os.path.isdir(os.path.expanduser(model_path))


def locate(model_path, filename, what, local_only=False):
    """Local path of `filename` in a directory or hub repository, or None if it has none.

    `local_only`: for a hub id, search only the local hub cache, even when online.
    """
    if is_local(model_path):
        path = os.path.join(os.path.expanduser(model_path), filename)
        return path if os.path.isfile(path) else None
    if os.path.isabs(model_path) or model_path.startswith((".", "~")) or model_path.count("/") > 1:
        raise EncoderUnavailable(f"cannot load {what}: model directory {model_path} does not exist")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return hf_hub_download(model_path, filename, local_files_only=local_only or offline())
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None
    except OSError as e:  # repository missing, network failure, ...
        raise EncoderUnavailable(_hub_message(model_path, what, (filename,), str(e))) from e


def load_flax_model(cls, model_path, what, read_config=None, **model_kwargs):
    """(model, params) of Flax class `cls` from `model_path`; every weight the model uses must be present.

    `read_config(config_json_path)` builds the model config (default: `cls.config_class.from_pretrained`).
    """
    from flax.traverse_util import flatten_dict, unflatten_dict

    config_json = locate(model_path, "config.json", what)
    weights = next(filter(None, (locate(model_path, n, what) for n in WEIGHT_FILES)), None)  # first found only
    if config_json is None or weights is None:
        raise EncoderUnavailable(missing_files_message(model_path, what))
    config = (read_config or cls.config_class.from_pretrained)(config_json)
    model = cls(config, _do_init=False, **model_kwargs)
    state = _read_weights(cls, model, weights)
    shapes = flatten_dict(model.params_shape_tree)
    flat = flatten_dict(state)
    missing = sorted("/".join(k) for k in shapes if k not in flat)
    if missing:
        raise EncoderUnavailable(f"{what}: {weights} lacks weights the model needs (they would be random): {missing}")
    wrong = [f"{'/'.join(k)} {flat[k].shape} != {v.shape}" for k, v in shapes.items() if flat[k].shape != v.shape]
    if wrong:
        raise EncoderUnavailable(f"{what}: {weights} has weights of the wrong shape for {config_json}: {wrong}")
    return model, unflatten_dict({k: flat[k] for k in shapes})


def missing_files_message(model_path, what):
    """What was looked for, for a model directory or hub id lacking its config or weights."""
    if not is_local(model_path):
        return _hub_message(model_path, what, ("config.json",) + WEIGHT_FILES, "not found")
    model_dir = os.path.expanduser(model_path)
    torch_only = os.path.isfile(os.path.join(model_dir, "pytorch_model.bin"))
    return (f"cannot load {what} from directory {model_dir}: looked for {os.path.join(model_dir, 'config.json')} "
            f"and one of {', '.join(os.path.join(model_dir, n) for n in WEIGHT_FILES)}"
            + ("; found only pytorch_model.bin, which needs torch: convert it to model.safetensors"
               if torch_only else ""))


def _read_weights(cls, model, path):
    """Flax-layout parameter tree from a Flax msgpack/safetensors file or a PyTorch-layout safetensors file."""
    from safetensors import safe_open

    prefix = cls.base_model_prefix
    if path.endswith(".safetensors"):
        with safe_open(path, framework="numpy") as f:
            fmt = (f.metadata() or {}).get("format", "pt")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if fmt != "flax":
            from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

            # The converter reads only the target's key names and shapes: the shape tree stands in for params.
            target = types.SimpleNamespace(params=model.params_shape_tree, base_model_prefix=prefix)
            return convert_pytorch_state_dict_to_flax(tensors, target)
        from flax.traverse_util import unflatten_dict

        state = unflatten_dict(tensors, sep=".")
    else:
        state = cls.load_flax_weights(path)
    if prefix not in model.params_shape_tree and prefix in state:
        state = state[prefix]
    return state


def _hub_message(model_id, what, filenames, detail):
    from huggingface_hub import constants

    if offline():
        return (f"cannot load {what}: {model_id!r} is not a local directory, so it was looked up as a hub id; "
                f"HF_HUB_OFFLINE is set, so only the local hub cache {constants.HF_HUB_CACHE} was searched for "
                f"{', '.join(filenames)} ({detail}). Pass a local directory holding config.json and "
                "flax_model.msgpack or model.safetensors.")
    return (f"cannot load {what}: {model_id!r} is not a local directory and the hub has no usable "
            f"{' / '.join(filenames)} ({detail})")


def run_on_host(fn, *args):
    """`jit(fn)(*args)` on the host CPU at full float32 matmul precision, as numpy.

    A table is built once and reused everywhere, so it must not depend on the accelerator of the machine
    that happened to build it (TF32 or bf16 matmuls on GPU/TPU).
    """
    import jax

    cpu = jax.local_devices(backend="cpu")[0]
    with jax.default_device(cpu), jax.default_matmul_precision("highest"):
        return np.asarray(jax.jit(fn)(*jax.device_put(args, cpu)))


def load_tokenizer(cls, model_path, what):
    """`cls.from_pretrained(model_path)` for a tokenizer, offline-aware, with a clear error."""
    try:
        return cls.from_pretrained(os.path.expanduser(model_path) if is_local(model_path) else model_path,
                                   local_files_only=offline())
    except (OSError, ValueError, TypeError) as e:
        if is_local(model_path):
            raise EncoderUnavailable(f"cannot load {what} from directory {model_path}: {e}") from e
        raise EncoderUnavailable(_hub_message(model_path, what, ("tokenizer files",), str(e))) from e
