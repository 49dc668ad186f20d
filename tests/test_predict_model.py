"""Inference tool end to end: a tiny exported PPT model labels PLY files (slow: compiles the model)."""

import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from data_prep import synthetic  # noqa: E402
from ppt_jax import labels, ply, predict, render  # noqa: E402


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    import jax

    from configs import tiny
    from ppt_jax.train import checkpoint, setup

    out = str(tmp_path_factory.mktemp("export"))
    config = tiny.get_config()
    config.text.encoder = "minilm"
    table, _ = setup.text_table(config, out)
    variables = setup.init_variables(setup.build_model(config, table), config, seed=0)
    return str(checkpoint.export(out, jax.device_get(variables), config.to_dict()))


def _scene_ply(path, domain, binary):
    raw = synthetic.make_scene(domain, "room", seed=1, density=0.004)
    coord, color = raw["coord"].astype(np.float32), raw["color"]
    vertex = {"x": coord[:, 0], "y": coord[:, 1], "z": coord[:, 2],
              "red": color[:, 0], "green": color[:, 1], "blue": color[:, 2]}
    if binary:
        ply.write_ply(str(path), vertex)
    else:
        lines = ["ply", "format ascii 1.0", f"element vertex {len(coord)}"]
        lines += [f"property {'float' if k in 'xyz' else 'uchar'} {k}" for k in vertex]
        lines += ["end_header"] + [" ".join(f"{v:g}" for v in row)
                                   for row in np.stack(list(vertex.values()), 1)]
        path.write_text("\n".join(lines) + "\n")
    return len(coord)


@pytest.mark.slow
def test_predict_labels_a_directory_of_ply_files_skipping_a_broken_one(export_dir, tmp_path, capsys):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    sizes = {"a_binary": _scene_ply(scenes / "a_binary.ply", labels.S3DIS, True),
             "b_ascii": _scene_ply(scenes / "b_ascii.ply", labels.S3DIS, False)}
    (scenes / "0_broken.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 9\n")
    out = tmp_path / "out"
    rc = predict.main(["--checkpoint", export_dir, "--dataset", "s3dis", "--input", str(scenes),
                       "--out", str(out)])
    err = capsys.readouterr().err
    # The broken file (first in order) is reported and skipped; the good ones after it are labelled.
    assert rc == 1, err
    assert f"{scenes / '0_broken.ply'}: " in err and "(skipped)" in err
    assert "1 of 3 input files failed and were skipped" in err
    assert not (out / "0_broken.ply").exists()
    for name, size in sizes.items():
        vertex = ply.read_ply(str(out / f"{name}.ply"))["vertex"]
        assert len(vertex) == size
        label = vertex["label"]
        assert label.min() >= 0 and label.max() < labels.num_classes(labels.S3DIS)
        rgb = np.stack([vertex[c] for c in ("red", "green", "blue")], 1)
        np.testing.assert_array_equal(rgb, render.colorize(label, labels.S3DIS))
        assert ((vertex["confidence"] > 0) & (vertex["confidence"] <= 1 + 1e-6)).all()
        with Image.open(out / f"{name}.png") as im:
            assert im.format == "PNG" and im.size[0] > 500


@pytest.mark.slow
def test_predict_errors_are_clear(export_dir, tmp_path, capsys):
    scene = tmp_path / "x.ply"
    _scene_ply(scene, labels.SCANNET, True)
    args = ["--input", str(scene), "--out", str(tmp_path / "o")]
    assert predict.main(["--checkpoint", export_dir, "--dataset", "matterport", *args]) == 2
    assert "--dataset 'matterport': this model was trained on" in capsys.readouterr().err
    assert predict.main(["--checkpoint", str(tmp_path), "--dataset", "scannet", *args]) == 2
    assert f"{tmp_path}: not an exported model: expected config.json" in capsys.readouterr().err
    notply = tmp_path / "bad.ply"
    notply.write_text("solid cube\n")
    assert predict.main(["--checkpoint", export_dir, "--dataset", "scannet", "--input",
                         str(notply), "--out", str(tmp_path / "o")]) == 2
    assert f"{notply}: not a PLY file" in capsys.readouterr().err


@pytest.mark.slow
def test_the_vote_step_counts_what_a_cut_hierarchy_drops(export_dir):
    """Prediction's exact capacities drop nothing; one site short at level 1 is counted, not lost silently
    (the trainer's --mode test raises on a non-zero count)."""
    import dataclasses

    import jax.numpy as jnp

    from ppt_jax.sparse import sizing
    from ppt_jax.train import sharding, step

    predictor = predict.Predictor(export_dir)
    raw = synthetic.make_scene(labels.SCANNET, "room", seed=2, density=0.004)
    cloud = predict.Cloud("room", raw["coord"].astype(np.float32), raw["color"],
                          np.tile(np.float32([0, 0, 1]), (len(raw["coord"]), 1)), "room.ply")
    batches, _ = predict._single_view(predictor, cloud, 0)
    spec = predict.exact_spec(batches, predictor.config.sparse)
    votes = lambda: jnp.zeros((batches[0]["mask"].shape[1], predictor.model.class_mask.shape[1]))  # donated
    mesh = sharding.make_mesh()
    _, dropped = step.make_vote_step(predictor.model, spec, mesh)(predictor.variables, votes(), batches[0])
    assert int(dropped) == 0
    caps = list(spec.capacities)
    row = batches[0]["grid_coord"][0][batches[0]["mask"][0]]
    caps[1] = int(sizing.measure([row])["sites"][0, 1]) - 1     # one site short of the need (no rounding)
    tight = dataclasses.replace(spec, capacities=tuple(caps))
    _, dropped = step.make_vote_step(predictor.model, tight, mesh)(predictor.variables, votes(), batches[0])
    assert int(dropped) >= 1
