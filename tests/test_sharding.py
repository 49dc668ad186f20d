"""The one-axis data mesh on 4 simulated CPU devices: rows split in order, the global batch sharded,
uneven batches refused with the config field named."""

import subprocess
import sys
import textwrap

from conftest import REPO, cpu_env


PROBE = textwrap.dedent("""
    import jax, numpy as np, pytest
    from ppt_jax.train import sharding
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.shape["data"] == 4
    sharding.check_host_rows(mesh, 8, "config.data.batch_size")
    with pytest.raises(ValueError, match="config.data.batch_size: 6 global rows do not split"):
        sharding.check_host_rows(mesh, 6, "config.data.batch_size")
    batch = {"x": np.arange(8 * 3).reshape(8, 3), "c": np.arange(8, dtype=np.int32)}
    out = sharding.global_batch(batch, mesh)
    for k, v in out.items():
        np.testing.assert_array_equal(np.asarray(v), batch[k])
        shards = sorted(v.addressable_shards, key=lambda s: s.device.id)
        assert [s.index[0] for s in shards] == [slice(2 * i, 2 * i + 2) for i in range(4)]
    w = jax.device_put(np.ones(3), sharding.replicated(mesh))
    assert w.sharding.is_fully_replicated and len(w.sharding.device_set) == 4
    print("OK")
""")


def test_data_mesh_splits_rows_in_device_order():
    env = cpu_env(4)
    res = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]
