"""Every choice and range of a run's config, checked before any work (data, text table, compile).

`problems(config)` lists one line per bad setting, naming it (`config.section.field: ...`);
`check(config)` raises `ConfigError` with all of them. The choices come from the modules that
implement them (heads, adapters, optimizers, encoders...), so this file adds no second list.
"""

from ppt_jax import labels
from ppt_jax.data import config as data_config
from ppt_jax.models import heads, spunet
from ppt_jax import sparse
from ppt_jax.sparse import hierarchy
from ppt_jax.train import checkpoint, optim

NONFINITE_ACTIONS = ("raise", "skip")
MODEL_DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
    """Bad settings; the message has one line per setting."""


def _choice(out, name, value, choices):
    if value not in choices:
        out.append(f"config.{name}: must be one of {tuple(choices)}, got {value!r}")


def _at_least(out, name, value, low):
    if not isinstance(value, (int, float)) or value < low:
        out.append(f"config.{name}: must be >= {low}, got {value!r}")


def _model(c, out):
    m = c.model
    _choice(out, "model.head", m.head, heads.HEADS)
    _choice(out, "model.adapter", m.adapter, spunet.ADAPTERS)
    _choice(out, "model.s3dis_order", m.s3dis_order, labels.S3DIS_ORDERS)
    _choice(out, "model.dtype", m.dtype, MODEL_DTYPES)
    for field in ("channels", "layers"):
        value = tuple(m[field])
        if len(value) != 8 or any(not isinstance(v, int) or v < 1 for v in value):
            out.append(f"config.model.{field}: needs 8 positive integers (4 encoder + 4 decoder "
                       f"stages), got {value}")
    for field in ("base_channels", "context_channels"):
        _at_least(out, f"model.{field}", m[field], 1)
    _at_least(out, "model.bn_group_size", m.bn_group_size, 0)
    names = tuple(m.conditions)
    unknown = [n for n in names if n not in labels.CLASS_NAMES]
    if not names or unknown or len(set(names)) != len(names):
        out.append(f"config.model.conditions: need distinct known datasets {labels.DATASETS}, "
                   f"got {names}")
    missing = [n for n in c.eval.datasets if n not in names]
    if missing:
        out.append(f"config.eval.datasets: {missing} are not in config.model.conditions {names}")


def _train(c, out):
    t = c.train
    _choice(out, "train.on_nonfinite", t.on_nonfinite, NONFINITE_ACTIONS)
    _at_least(out, "train.steps", t.steps, 0)
    if t.steps == 0:
        _at_least(out, "train.epochs", t.epochs, 1)
    for field, low in (("log_every", 1), ("eval_every", 0), ("checkpoint_every", 1),
                       ("keep_checkpoints", 1)):
        _at_least(out, f"train.{field}", t[field], low)
    if t.stop_at_step != -1:
        _at_least(out, "train.stop_at_step", t.stop_at_step, 1)
    _choice(out, "export.part", c.export.part, checkpoint.EXPORT_PARTS)


def _optim(c, out):
    o = c.optim
    _choice(out, "optim.name", o.name, optim.OPTIMIZERS)
    for field in ("lr", "div_factor", "final_div_factor", "group_lr_scale"):
        if not o[field] > 0:
            out.append(f"config.optim.{field}: must be > 0, got {o[field]!r}")
    for field in ("weight_decay", "clip_grad"):
        _at_least(out, f"optim.{field}", o[field], 0)
    if not 0 < o.pct_start < 1:
        out.append(f"config.optim.pct_start: must lie in (0, 1), got {o.pct_start!r}")


def _text_and_sparse(c, out):
    from ppt_jax import text

    _choice(out, "text.encoder", c.text.encoder, tuple(text.ENCODERS))
    if c.text.fallback:
        _choice(out, "text.fallback", c.text.fallback, tuple(text.ENCODERS))
    if "[x]" not in c.text.template:
        out.append(f"config.text.template: must contain '[x]' (the class name), got "
                   f"{c.text.template!r}")
    _choice(out, "sparse.search_method", c.sparse.search_method, hierarchy.SEARCH_METHODS)
    _choice(out, "sparse.conv_form", c.sparse.conv_form, sparse.sizing.FORMS)
    for field in ("capacity_margin", "pair_margin"):
        if not c.sparse[field] >= 1.0:
            out.append(f"config.sparse.{field}: must be >= 1 (capacity over the largest measured "
                       f"crop), got {c.sparse[field]}")
    _choice(out, "sparse.on_overflow", c.sparse.on_overflow, ("raise", "skip"))
    if not c.sparse.sizing_crops >= 1:
        out.append(f"config.sparse.sizing_crops: must be >= 1, got {c.sparse.sizing_crops}")


def _data(c, out):
    data = c.data
    if c.synthetic.enabled:    # "" data dirs: the generated synthetic splits (the entry point's)
        data = c.data.copy_and_resolve_references()
        for name in data.datasets:
            data.train_dirs[name] = data.train_dirs[name] or "<workdir>/synthetic"
    try:
        data_config.check_config(data, train=True)
    except ValueError as err:
        out.append(str(err))


def problems(config):
    """One line per bad setting of `config` (empty when it is fine)."""
    out = []
    for part in (_model, _train, _optim, _text_and_sparse, _data):
        try:
            part(config, out)
        except (AttributeError, KeyError, TypeError) as err:
            out.append(f"config: malformed section for {part.__name__[1:]} ({err})")
    return out


def check(config):
    found = problems(config)
    if found:
        raise ConfigError("\n".join(found))
