"""Pointcept PPT-v1m1 state dict -> our variables.

The full-size key list is rebuilt here from the reference's module structure (SpUNetBase constructor
loop, PDBatchNorm, BasicBlock, PPT-v1m1), not from our parameter tree; the numbers are checked against
spconv's and Pointcept's own outputs (tests/data/pointcept_reference.npz) at the end."""

import functools
import json
import os
import types

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from configs import base
from ppt_jax import labels, models, sparse
from ppt_jax.models import pointcept_import as pi
from ppt_jax.train.step import build_hierarchies
from conftest import REPO, pointcept_random_state, pointcept_spunet_shapes

REF_BACKBONE = ("ScanNet", "S3DIS", "Structured3D")
REF_PPT = ("Structured3D", "ScanNet", "S3DIS")
FULL = dict(channels=(32, 64, 128, 256, 256, 128, 96, 96), layers=(2, 3, 4, 6, 2, 2, 2, 2), base_channels=32,
            context_channels=256)                     # the reference's sizes
SMALL = dict(base.MODEL_SIZES["tiny"], context_channels=16)


def template(sizes, text_dim, n=32):
    model = models.PPT(labels.DATASETS, **sizes, text_table=np.eye(36, text_dim, dtype=np.float32))
    spec = sparse.HierarchySpec(capacities=(n,) * 5)

    def init(feat, coords, mask):
        h = build_hierarchies(coords, mask, spec)
        return model.init(jax.random.PRNGKey(0), feat, h, jnp.zeros(1, jnp.int32))

    return jax.eval_shape(init, jax.ShapeDtypeStruct((1, n, 6), jnp.float32),
                          jax.ShapeDtypeStruct((1, n, 3), jnp.int32),
                          jax.ShapeDtypeStruct((1, n), bool))


def test_full_size_key_list_converts_completely():
    """1067 tensors in the reference state dict; all fill our full-size PPT exactly."""
    shapes = pointcept_spunet_shapes(**FULL)
    assert len(shapes) == 1067
    state = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    variables, report = pi.convert(state, template(FULL, 512), labels.DATASETS)
    n_stats = sum(1 for k in shapes if k.endswith("num_batches_tracked"))
    assert report.unused_keys == [] and len(report.skipped_keys) == n_stats == 59 * 3
    assert report.used_keys == len(shapes) - n_stats - 2          # minus class_embedding, logit_scale
    assert models.count_params(variables["params"]) == 43_648_704


@pytest.fixture(scope="module")
def small_import():
    state = pointcept_random_state(pointcept_spunet_shapes(**SMALL, text_dim=12))
    variables, report = pi.convert(state, template(SMALL, 12), labels.DATASETS)
    ref = {k[len("module."):]: v for k, v in state.items()}
    return ref, variables, report


def test_leaves_by_hand(small_import, tmp_path):
    ref, v, report = small_import
    p, bb = v["params"], v["params"]["backbone"]
    assert report.unused_keys == [] and report.kept_from_template == []
    np.testing.assert_array_equal(report.text_table, ref["class_embedding"])
    assert report.logit_scale == pytest.approx(100.0)
    # Prompt rows by name: our ScanNet (0) = reference PPT row 1, our Structured3D (2) = row 0.
    np.testing.assert_array_equal(p["prompt_table"][0], ref["embedding_table.weight"][1])
    np.testing.assert_array_equal(p["prompt_table"][2], ref["embedding_table.weight"][0])
    # Stem conv: our tap (dx+2)*25 + (dy+2)*5 + (dz+2), w[tap, in, out] = spconv[out, kx, ky, kz, in].
    w, src = bb["conv_input"]["conv"]["kernel"], ref["backbone.conv_input.conv.weight"]
    dx, dy, dz, i, o = 1, -2, 0, 4, 3
    assert w[(dx + 2) * 25 + (dy + 2) * 5 + (dz + 2), i, o] == src[o, dx + 2, dy + 2, dz + 2, i]
    # Strided conv: tap 4 cx + 2 cy + cz.
    w, src = bb["down_2"]["conv"]["kernel"], ref["backbone.down.2.conv.weight"]
    assert w[4 * 1 + 2 * 0 + 1, 5, 6] == src[6, 1, 0, 1, 5]
    # k=1 conv: spconv multiplies by the stored (out, 1, 1, 1, in) buffer viewed as (in, out).
    w, src = bb["dec_0"]["block0"]["proj_conv"]["kernel"], ref["backbone.dec.0.block0.proj_conv.weight"]
    assert w.shape == (1, 16, 8) and w[0, 11, 2] == src.reshape(-1)[11 * 8 + 2]
    # PDNorm: our S3DIS (1) = reference backbone bns.1; our Structured3D (2) = bns.2.
    bn = "backbone.enc.1.block0.bn2"
    np.testing.assert_array_equal(bb["enc_1"]["block0"]["bn2"]["scale"][2], ref[f"{bn}.bns.2.weight"])
    np.testing.assert_array_equal(v["batch_stats"]["backbone"]["enc_1"]["block0"]["bn2"]["var"][1],
                                  ref[f"{bn}.bns.1.running_var"])
    np.testing.assert_array_equal(bb["enc_1"]["block0"]["bn2"]["modulation"]["kernel"],
                                  ref[f"{bn}.modulation.1.weight"].T)
    np.testing.assert_array_equal(p["seg_head"]["proj_head"]["kernel"], ref["proj_head.weight"].T)
    # The .npz reader strips `module.` and gives the same variables.
    path = tmp_path / "ppt.npz"
    np.savez(path, **{f"module.{k}": a for k, a in ref.items()})
    again, _ = pi.convert(pi.load_state_dict(str(path)), template(SMALL, 12), labels.DATASETS)
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, v)


def test_bad_state_dicts_are_named(small_import):
    ref, _, _ = small_import
    tmpl = template(SMALL, 12)
    broken = dict(ref)
    del broken["backbone.up.3.bn.bns.1.running_mean"]
    with pytest.raises(KeyError, match="up.3.bn.bns.1.running_mean"):
        pi.convert(broken, tmpl, labels.DATASETS)
    broken = {**ref, "proj_head.weight": np.zeros((7, 8), np.float32)}
    with pytest.raises(ValueError, match="proj_head/kernel"):
        pi.convert(broken, tmpl, labels.DATASETS)
    with pytest.raises(ValueError, match="Mars"):
        pi.convert(ref, tmpl, ("ScanNet", "Mars"))
    _, report = pi.convert({**ref, "backbone.extra.weight": np.zeros(3)}, tmpl, labels.DATASETS)
    assert report.unused_keys == ["backbone.extra.weight"]
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        pi.load_state_dict("/nowhere.npz")


def test_bare_backbone_state_dict(small_import):
    """A SpUNet-v1m3 state dict (no `backbone.` prefix) fills the backbone; strict=False keeps the
    prompt table and head of a concrete template and says so."""
    ref, v, _ = small_import
    bare = {k[len("backbone."):]: a for k, a in ref.items() if k.startswith("backbone.")}
    tmpl = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), template(SMALL, 12))
    with pytest.raises(KeyError, match="embedding_table"):
        pi.convert(bare, tmpl, labels.DATASETS)
    got, report = pi.convert(bare, tmpl, labels.DATASETS, strict=False)
    assert sorted(report.kept_from_template) == ["params/prompt_table", "params/seg_head/proj_head/bias",
                                                 "params/seg_head/proj_head/kernel"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, got["params"]["backbone"], v["params"]["backbone"])
    assert not np.any(got["params"]["prompt_table"])


# ---- Against the reference's own code: tests/data/pointcept_reference.npz ----------------------------
# Written by tests/data/make_pointcept_reference.py, which runs spconv 2.3.8 (CPU, one thread) and
# Pointcept's PPT-v1m1 / SpUNet-v1m3 source on tiny random inputs; its docstring says how to rerun it.

@pytest.fixture(scope="module")
def reference():
    with np.load(os.path.join(os.path.dirname(__file__), "data", "pointcept_reference.npz")) as f:
        ref = {k: f[k] for k in f.files}
    shapes = json.loads(str(ref.pop("model/state_keys")))
    flat, state, start = ref.pop("model/state_values").astype(np.float32), {}, 0
    for key, shape in shapes.items():
        size = int(np.prod(shape))
        state[key] = flat[start:start + size].reshape(shape)
        start += size
    state["class_embedding"] = ref.pop("model/state/class_embedding")
    state["logit_scale"] = ref.pop("model/state/logit_scale")
    return ref, state


def _per_sample(indices, rows, n):
    """Fixture rows (batch, x, y, z order) -> (B, n, ...) padded per sample, and the masks."""
    out, masks = [], []
    for b in range(indices[:, 0].max() + 1):
        sel = rows[indices[:, 0] == b]
        out.append(np.pad(sel, [(0, n - len(sel))] + [(0, 0)] * (sel.ndim - 1)))
        masks.append(np.arange(n) < len(sel))
    return np.stack(out), np.stack(masks)


def _close(got, want, what):
    scale = max(float(np.max(np.abs(want))), 1e-6)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale, err_msg=what)


def test_single_convs_match_spconv_forward_and_backward(reference):
    """SubMConv3d k=1/3/5, SparseConv3d k2s2 and its SparseInverseConv3d: outputs and both gradients."""
    ref, _ = reference
    idx, n = ref["conv/indices"], 30
    coords, mask = _per_sample(idx, idx[:, 1:], n)
    x, _ = _per_sample(idx, ref["conv/x"], n)
    spec = sparse.HierarchySpec(capacities=(n, n))
    h = jax.jit(build_hierarchies, static_argnums=2)(coords, mask, spec)

    @functools.partial(jax.jit, static_argnums=0)
    def run(fn, x, w, cot):
        y, vjp = jax.vjp(lambda x, w: jax.vmap(lambda xi, hi: fn(xi, hi, 0, w))(x, h), x, w)
        return (y, *vjp(cot))

    for k in (1, 3, 5):
        name = f"conv/subm{k}"
        cot, _ = _per_sample(idx, ref[f"{name}/cotangent"], n)
        y, dx, dw = run(sparse.subm_conv, x, pi.spconv_to_taps(ref[f"{name}/weight"]), cot)
        _close(np.asarray(y)[mask], ref[f"{name}/y"], f"{name} forward")
        _close(np.asarray(dx)[mask], ref[f"{name}/dx"], f"{name} input gradient")
        _close(np.asarray(dw), pi.spconv_to_taps(ref[f"{name}/dw"]), f"{name} weight gradient")

    # Down conv: match our level-1 sites to spconv's output sites by (sample, coordinate).
    ours = {(b, *map(int, c)): (b, j) for b in range(2)
            for j, c in enumerate(np.asarray(h.coords[1][b])) if h.masks[1][b, j]}
    where = tuple(np.array([ours[tuple(map(int, r))] for r in ref["conv/down/indices"]]).T)
    assert len(ours) == len(ref["conv/down/indices"])
    cot = np.zeros((2, n, 2), np.float32)
    cot[where] = ref["conv/down/cotangent"]
    y, dx, dw = run(sparse.down_conv, x, pi.spconv_to_taps(ref["conv/down/weight"]), cot)
    _close(np.asarray(y)[where], ref["conv/down/y"], "down forward")
    _close(np.asarray(dx)[mask], ref["conv/down/dx"], "down input gradient")
    _close(np.asarray(dw), pi.spconv_to_taps(ref["conv/down/dw"]), "down weight gradient")

    xc = np.zeros((2, n, 2), np.float32)
    xc[where] = ref["conv/up/x"]
    cot, _ = _per_sample(idx, ref["conv/up/cotangent"], n)
    y, dx, dw = run(sparse.up_conv, xc, pi.spconv_to_taps(ref["conv/up/weight"]), cot)
    _close(np.asarray(y)[mask], ref["conv/up/y"], "up forward")
    _close(np.asarray(dx)[where], ref["conv/up/dx"], "up input gradient")
    _close(np.asarray(dw), pi.spconv_to_taps(ref["conv/up/dw"]), "up weight gradient")


@pytest.fixture(scope="module")
def imported(reference, tmp_path_factory):
    """The fixture's Pointcept state dict (saved under DDP names) through the user's import command."""
    _, state = reference
    root = tmp_path_factory.mktemp("import")
    np.savez(root / "ppt.npz", **{f"module.{k}": v for k, v in state.items()})
    return root / "ppt.npz", root / "export"


def test_import_command_writes_an_export_that_predicts_what_pointcept_predicts(reference, imported, capsys):
    """python -m ppt_jax.models.pointcept_import -> export -> the inference tool's Predictor: the same
    backbone features and seg_logits as Pointcept's PPT-v1m1 (eval mode), every condition, 2 scenes."""
    from ppt_jax import predict
    ref, state = reference
    npz, out = imported
    assert pi.main(["--checkpoint", str(npz), "--out", str(out),
                    "--config", os.path.join(REPO, "configs", "tiny.py")]) == 0
    printed = capsys.readouterr().out
    assert "model.s3dis_order='code_faithful' (the reference's order" in printed
    assert "data.color_norm='unit' (color / 255, Pointcept >= v1.6.0" in printed
    assert "channels (4, 4, 4, 4, 4, 4, 4, 4), layers (1, 1, 1, 1, 1, 1, 1, 1), base 4" in printed

    predictor = predict.Predictor(str(out))       # the text table comes from the export's cache
    model, variables = predictor.model, predictor.variables
    assert model.s3dis_order == pi.S3DIS_ORDER
    np.testing.assert_array_equal(np.asarray(model.text_table, np.float32), state["class_embedding"])
    offset = ref["model/offset"]
    idx = np.concatenate([np.full((e - s, 1), b) for b, (s, e) in enumerate(zip((0, *offset[:-1]), offset))])
    idx = np.concatenate([idx, ref["model/grid_coord"]], 1)
    n = 36
    coords, mask = _per_sample(idx, idx[:, 1:].astype(np.int32), n)
    feat, _ = _per_sample(idx, ref["model/feat"], n)
    spec = sparse.HierarchySpec(capacities=(n,) * 5)
    h = jax.jit(build_hierarchies, static_argnums=2)(coords, mask, spec)
    backbone = jax.jit(functools.partial(model.apply, method=models.PPT.features))
    head = jax.jit(lambda m, v, f, c: m.apply(v, f, c, method=lambda mod, f, c: mod.seg_head(f, c)),
                   static_argnums=0)
    for name in model.conditions:
        cond = jnp.full(2, predictor.condition(name)[1], jnp.int32)
        feats = backbone(variables, feat, h, cond)
        _close(np.asarray(feats)[mask], ref[f"model/{name}/backbone"], f"{name} backbone")
        logits = np.asarray(head(model, variables, feats, cond))[mask][:, :labels.num_classes(name)]
        _close(logits, ref[f"model/{name}/seg_logits"], f"{name} seg_logits")
        np.testing.assert_array_equal(logits.argmax(1), ref[f"model/{name}/seg_logits"].argmax(1))
        if name == labels.S3DIS:  # the model's default order does not predict what the reference does
            other = np.asarray(head(model.clone(s3dis_order="intended"), variables, feats, cond))[mask]
            assert np.mean(other[:, :13].argmax(1) != logits.argmax(1)) > 0.5


def test_import_choices_and_refusals(imported, tmp_path, capsys):
    npz, _ = imported
    config = os.path.join(REPO, "configs", "tiny.py")
    out = tmp_path / "legacy"
    assert pi.main(["--checkpoint", str(npz), "--out", str(out), "--config", config,
                    "--s3dis_order", "intended", "--color_norm", "legacy"]) == 0
    printed = capsys.readouterr().out
    assert "NOT the reference's order: S3DIS predictions will differ" in printed
    assert "data.color_norm='legacy' (color / 127.5 - 1, Pointcept < v1.6.0)" in printed
    assert "--config.model.s3dis_order=intended --config.data.color_norm=legacy" in printed
    saved = json.load(open(out / "config.json"))["config"]
    assert saved["model"]["s3dis_order"] == "intended" and saved["data"]["color_norm"] == "legacy"
    for args, message in [(["--checkpoint", str(tmp_path / "nowhere.npz")], "no Pointcept checkpoint at"),
                          (["--checkpoint", str(tmp_path / "x.pth")], "reading .pth needs torch"),
                          (["--checkpoint", str(npz), "--config", str(tmp_path / "c.py")], "no such config file")]:
        if args[1].endswith(".pth"):
            open(args[1], "wb").close()
        assert pi.main([*args, "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
    state = dict(np.load(npz))
    state["module.backbone.extra.weight"] = np.zeros(3, np.float32)
    np.savez(tmp_path / "extra.npz", **state)
    assert pi.main(["--checkpoint", str(tmp_path / "extra.npz"), "--out", str(tmp_path / "o"),
                    "--config", config]) == 2
    assert "1 tensors have no place in the model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()          # a refused import writes nothing


def test_finetune_from_an_import_refuses_other_settings(imported):
    """A fine-tune run with the defaults (intended order) from a code_faithful import: one message."""
    from configs import finetune
    from ppt_jax.train import setup
    _, out = imported
    config = finetune.get_config("tiny")
    config.init.export_dir = str(out)
    with pytest.raises(ValueError, match="config.model.s3dis_order: export 'code_faithful', this run "
                                         "'intended'.*--config.model.s3dis_order=code_faithful"):
        setup.init_from_export(types.SimpleNamespace(config=config), {})
