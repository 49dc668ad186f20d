"""PTv3 import + forward/backward against Pointcept's own PT-v3m1 run on CPU (same weights, same inputs).

tests/fixtures/make_pointcept_ptv3.py recorded PPT-v1m1(PT-v3m1, backbone_mode=True) on a two-sample
batch: its state dict, eval- and train-mode features, the train step's running statistics and the
gradients of sum(features * probe)."""

import contextlib
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppt_jax import models, sparse
from ppt_jax.models import pointcept_import, ptv3_import
from ppt_jax.train.step import build_hierarchies

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "pointcept_ptv3_small.npz")
CONDITIONS = ("Structured3D", "ScanNet", "S3DIS")       # ours; the reference's backbone has another order
SMALL = (("enc_depths", (2, 1, 1, 1)), ("enc_channels", (8, 8, 8, 8)), ("enc_heads", (2, 2, 2, 2)),
         ("enc_patch_size", (16, 8, 4, 2)), ("dec_depths", (2, 1, 1)), ("dec_channels", (8, 8, 8)),
         ("dec_heads", (2, 2, 2)), ("dec_patch_size", (16, 8, 4)), ("drop_path", 0.0),
         ("shuffle_orders", False))
N = 192


def _unpack(f, prefix):
    values, out, at = f[f"{prefix}_values"], {}, 0
    for name, shape in zip(f[f"{prefix}_names"], f[f"{prefix}_shapes"]):
        shape = tuple(int(s) for s in str(shape).split(",") if s)
        size = int(np.prod(shape))
        out[str(name)] = values[at:at + size].reshape(shape)
        at += size
    return out


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as f:
        data = {k: f[k] for k in f.files if not k.startswith(("state_", "grad_", "after_"))}
        data.update(state=_unpack(f, "state"), grad=_unpack(f, "grad"), after=_unpack(f, "after"))
    return data


def _batch(ref):
    """The reference's concatenated samples as our padded (B, N) rows; padding spread inside sample 1."""
    bounds = np.concatenate([[0], ref["offset"]])
    rows = []
    for b in range(2):
        n = bounds[b + 1] - bounds[b]
        slots = np.arange(n) if b == 0 else np.sort(np.random.default_rng(3).choice(N, n, replace=False))
        rows.append((bounds[b] + np.arange(n), slots))
    grid = np.zeros((2, N, 3), np.int32)
    feat = np.zeros((2, N, 6), np.float32)
    mask = np.zeros((2, N), bool)
    for b, (src, slots) in enumerate(rows):
        grid[b, slots], feat[b, slots], mask[b, slots] = ref["grid_coord"][src], ref["feat"][src], True
    return grid, feat, mask, rows


@pytest.fixture(scope="module")
def run(ref):
    """Import the reference's weights, then one jitted eval forward and one jitted train forward +
    backward (two compiles for the whole module)."""
    model = models.PPT(conditions=CONDITIONS, arch="ptv3", ptv3=SMALL, norm_adaptive=False,
                       head="decoupled")
    spec = sparse.HierarchySpec(capacities=(N, 96, 48, 24))
    grid, feat, mask, rows = _batch(ref)
    cond = jnp.full((2,), CONDITIONS.index("S3DIS"))
    h = jax.jit(build_hierarchies, static_argnums=2)(grid, mask, spec)
    sparse.check_hierarchy(h)
    probe = np.zeros((2, N, 8), np.float32)
    for b, (src, slots) in enumerate(rows):
        probe[b, slots] = ref["probe"][src]

    template = jax.eval_shape(lambda k: model.init(k, feat, h, cond, train=False), jax.random.key(0))
    template = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), template)
    variables, report = ptv3_import.convert(ref["state"], template, CONDITIONS, strict=False)

    @jax.jit
    def evaluate(variables, h):
        return model.apply(variables, feat, h, cond, train=False, method=models.PPT.features)

    @jax.jit
    def train(variables, h):
        def objective(params):
            out, updates = model.apply(dict(variables, params=params), feat, h, cond, train=True,
                                       method=models.PPT.features, mutable=["batch_stats"],
                                       rngs={"dropout": jax.random.key(0)})
            return jnp.sum(out * probe), (out, updates["batch_stats"])
        return jax.grad(objective, has_aux=True)(variables["params"])

    grads, (train_out, stats) = train(variables, h)
    gather = lambda out: np.concatenate([np.asarray(out)[b, slots] for b, (_, slots) in enumerate(rows)])
    return dict(report=report, variables=variables, template=template, eval_out=gather(evaluate(variables, h)),
                train_out=gather(train_out), stats=jax.device_get(stats), grads=jax.device_get(grads),
                features=lambda v: gather(evaluate(v, h)))


def test_import_uses_every_tensor_and_counts_the_reference_parameters(ref, run):
    r = run["report"]
    assert r.unused_keys == []
    assert sorted(r.kept_from_template) == sorted(
        f"params/seg_head/seg_heads_{d}_{leaf}" for d in range(3) for leaf in ("kernel", "bias"))
    assert r.used_keys == sum(1 for k in ref["state"] if not k.endswith("num_batches_tracked"))
    params = run["variables"]["params"]
    assert models.count_params(params["backbone"]) + params["prompt_table"].size == int(ref["num_params"])


def test_eval_forward_matches_reference(ref, run):
    np.testing.assert_allclose(run["eval_out"], ref["eval_out"], rtol=1e-4, atol=2e-5)


def test_train_forward_and_running_statistics_match_reference(ref, run):
    np.testing.assert_allclose(run["train_out"], ref["train_out"], rtol=1e-4, atol=2e-5)
    after = dict(ref["state"], **ref["after"])         # only the S3DIS rows moved
    stats, _ = ptv3_import.convert(after, {"batch_stats": run["template"]["batch_stats"]}, CONDITIONS)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                           run["stats"], stats["batch_stats"])


def test_gradients_match_reference(ref, run):
    """The reference's gradients, mapped to our layout by the importer (datasets other than S3DIS
    have no gradient there, zero here). Tolerances relative to each module's largest gradient: a
    bias just before a train-mode BatchNorm has a true gradient of 0 (both sides hold round-off)."""
    ref_grads = {k: np.zeros_like(v) for k, v in ref["state"].items()}
    ref_grads.update(ref["grad"])
    template = {"params": {k: v for k, v in run["template"]["params"].items() if k != "seg_head"}}
    mapped = ptv3_import.convert(ref_grads, template, CONDITIONS)[0]["params"]
    ours = {k: v for k, v in run["grads"].items() if k != "seg_head"}
    checked = 0
    for path, module in traverse_modules(ours):
        theirs = _at(mapped, path)
        stacked = any(k.endswith("_blocks") for k in path)        # a scanned stage: row i = block{i}
        for i in range(len(next(iter(module.values())))) if stacked else [slice(None)]:
            scale = max(np.abs(theirs[leaf][i]).max() for leaf in module) + 1e-6
            for leaf, g in module.items():
                np.testing.assert_allclose(g[i] / scale, theirs[leaf][i] / scale, atol=1e-4,
                                           err_msg=f"{path}/{leaf}[{i}]")
        checked += len(module)
    assert checked == len(jax.tree_util.tree_leaves(ours))


def traverse_modules(tree, path=()):
    """(path, {leaf: array}) for every module whose children are arrays."""
    leaves = {k: v for k, v in tree.items() if not isinstance(v, dict)}
    if leaves:
        yield path, leaves
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from traverse_modules(v, path + (k,))


def _at(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def test_recipe_has_the_reference_parameter_count():
    """The full PTv3 + PPT recipe (PTv3 defaults): as many backbone parameters as Pointcept builds."""
    import json
    with open(os.path.join(os.path.dirname(FIXTURE), "pointcept_ptv3_counts.json")) as f:
        counts = json.load(f)
    model = models.PPT(conditions=CONDITIONS, arch="ptv3", norm_adaptive=False, head="decoupled")
    spec = sparse.HierarchySpec(capacities=(64, 32, 16, 8, 8))
    grid, mask = jnp.zeros((1, 64, 3), jnp.int32), jnp.zeros((1, 64), bool)
    shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 64, 6)), build_hierarchies(grid, mask, spec),
                                                 jnp.zeros((1,), jnp.int32)), jax.random.key(0))
    params = shapes["params"]
    assert models.count_params(params["backbone"]) == counts["backbone_params"] == 97_413_040
    assert params["prompt_table"].size == counts["prompt_params"]


IMPORT_CONFIG = """
from configs import joint_ptv3


def get_config():
    c = joint_ptv3.get_config("tiny")
    c.model.ptv3.update(enc_heads=(2,) * 4, dec_heads=(2,) * 3, enc_patch_size=(16, 8, 4, 2),
                        dec_patch_size=(16, 8, 4), orders=("z", "z-trans", "hilbert", "hilbert-trans"))
    return c
"""


def full_state(ref, seed=0):
    """The fixture's backbone-mode state dict as a whole PPT-v1m1 checkpoint (language head, CLIP
    table, logit scale: random), under DDP names."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(36, 512)).astype(np.float32)
    state = dict(ref["state"], **{
        "proj_head.weight": rng.normal(size=(512, 8)).astype(np.float32),
        "proj_head.bias": rng.normal(size=(512,)).astype(np.float32),
        "class_embedding": table / np.linalg.norm(table, axis=1, keepdims=True),
        "logit_scale": np.array(np.log(100.0), np.float32)})
    return {f"module.{k}": v for k, v in state.items()}


@pytest.fixture(scope="module")
def imported(ref, tmp_path_factory):
    """python -m ppt_jax.models.pointcept_import on the checkpoint: (npz, config, export, printed)."""
    root = tmp_path_factory.mktemp("ptv3_import")
    np.savez(root / "ppt.npz", **full_state(ref))
    (root / "config.py").write_text(IMPORT_CONFIG)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert pointcept_import.main(["--checkpoint", str(root / "ppt.npz"), "--out", str(root / "export"),
                                      "--config", str(root / "config.py")]) == 0
    return root / "ppt.npz", root / "config.py", root / "export", printed.getvalue()


def test_import_command_reads_the_architecture_and_its_export_gives_the_reference_features(ref, run, imported):
    """The user's command on a PPT-v1m1(PT-v3m1) checkpoint: the backbone is detected, the architecture
    read from the shapes (heads, patch sizes, orders from --config), the export loads in the inference
    tool with the same model settings, and its arrays give the reference's eval-mode features."""
    from ppt_jax import predict
    _, config, export, printed = imported
    # 224 leaves of 8 blocks + the rest; the two 2-block stages (enc0, dec0) stack theirs: 18 arrays fewer each
    assert "412 tensors -> 188 arrays (full model), 30 BN counters skipped" in printed
    assert ("PT-v3m1 encoder depths (2, 1, 1, 1) channels (8, 8, 8, 8), decoder depths (2, 1, 1) channels "
            "(8, 8, 8), mlp ratio 4.0") in printed
    assert f"evaluate:  python -m ppt_jax.main --config={config} --mode=test --checkpoint=export" in printed
    finetune = [line for line in printed.splitlines() if line.startswith("fine-tune:")][0]
    for flag in ("--config=configs/finetune.py:ptv3", "'--config.model.ptv3.enc_depths=(2, 1, 1, 1)'",
                 "'--config.model.ptv3.enc_patch_size=(16, 8, 4, 2)'", "--config.model.s3dis_order=code_faithful"):
        assert flag in finetune
    assert "--config.model.channels" not in finetune         # a SpUNet field: PTv3 does not read it

    predictor = predict.Predictor(str(export))
    settings = dict(predictor.model.ptv3)
    for name, value in SMALL:
        if name not in ("drop_path", "shuffle_orders"):              # training-only
            assert settings[name] == value, name
    assert predictor.model.arch == "ptv3" and predictor.model.head == "language"
    params = predictor.variables["params"]
    state = {k[len("module."):]: v for k, v in full_state(ref).items()}
    np.testing.assert_array_equal(params["seg_head"]["proj_head"]["kernel"], state["proj_head.weight"].T)
    np.testing.assert_array_equal(np.asarray(predictor.model.text_table, np.float32), state["class_embedding"])
    # The export's backbone and prompts in the parity run's model (same tree: its compiled forward).
    variables = {"params": dict(run["variables"]["params"], backbone=params["backbone"],
                                prompt_table=params["prompt_table"]),
                 "batch_stats": predictor.variables["batch_stats"]}
    np.testing.assert_allclose(run["features"](variables), ref["eval_out"], rtol=1e-4, atol=2e-5)


def test_import_refusals_name_the_problem(ref, imported, tmp_path, capsys):
    npz, config, _, _ = imported
    state = dict(np.load(npz))
    cases = {
        "adaptive": ({"module.backbone.embedding.stem.norm.modulation.1.weight": np.zeros((16, 256), np.float32)},
                     "adaptive PDNorm (pdnorm_adaptive=True)"),
        "both": ({"module.backbone.conv_input.conv.weight": np.zeros((8, 5, 5, 5, 6), np.float32)},
                 "expected exactly one of"),
        "decoder": ({k: v for k, v in state.items() if ".dec.dec2." in k}, "expected 3 decoder stages"),
    }
    for name, (change, message) in cases.items():
        changed = {k: v for k, v in state.items() if name != "decoder" or k not in change}
        if name != "decoder":
            changed.update(change)
        np.savez(tmp_path / f"{name}.npz", **changed)
        assert pointcept_import.main(["--checkpoint", str(tmp_path / f"{name}.npz"), "--out",
                                      str(tmp_path / name), "--config", str(config)]) == 2
        assert message in capsys.readouterr().err, name
        assert not (tmp_path / name).exists()
    # The recipe's config has 5 encoder stages: heads and patch sizes that do not fit are named.
    assert pointcept_import.main(["--checkpoint", str(npz), "--out", str(tmp_path / "recipe")]) == 2
    assert "model.ptv3.enc_heads needs 4 entries" in capsys.readouterr().err
