"""Mesh construction helpers."""

import jax
import pytest

from vasa_jax import parallel


@pytest.mark.parametrize("shape,n,expected", [
    ((-1, 1, 1), 8, (8, 1, 1)), ((-1, 4, 2), 8, (1, 4, 2)), ((2, -1, 2), 8, (2, 2, 2)),
    ((1, 1, 1), 1, (1, 1, 1)), ((2, 2, 2), 8, (2, 2, 2))])
def test_resolve_mesh_shape(shape, n, expected):
    assert parallel.resolve_mesh_shape(shape, n) == expected


@pytest.mark.parametrize("shape,n,msg", [
    ((-1, -1, 1), 8, "at most one -1"), ((3, -1, 1), 8, "does not divide"),
    ((2, 2, 1), 8, "use -1"), ((8, 1), 8, "one entry per axis")])
def test_resolve_mesh_shape_errors(shape, n, msg):
    with pytest.raises(ValueError, match=msg):
        parallel.resolve_mesh_shape(shape, n)


def test_create_mesh_axes():
    mesh = parallel.create_mesh((-1, 4, 2))
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    assert mesh.size == jax.device_count()


def test_batch_size_per_process():
    assert parallel.batch_size_per_process(32) == 32 // jax.process_count()


def test_a_dimension_the_mesh_does_not_divide_is_replicated_and_reported():
    """On a 4-way FSDP mesh a (8, 6) kernel shards its 8 rows; a 6-wide bias cannot be split 4
    ways, so it stays whole on every device and is reported."""
    from flax import nnx
    from jax.sharding import PartitionSpec as P

    class Layer(nnx.Module):
        def __init__(self):
            self.kernel = nnx.Param(jax.numpy.zeros((8, 6)), out_sharding=("embed", None))
            self.bias = nnx.Param(jax.numpy.zeros((6,)), out_sharding=("embed",))

    mesh = parallel.create_mesh((1, 4, 1), num_devices=4)
    state = nnx.state(nnx.eval_shape(Layer))
    fallbacks = []
    sh = parallel.state_shardings(state, mesh, parallel.DEFAULT_RULES, fallbacks)
    assert sh["kernel"].value.spec == P("fsdp", None)
    assert sh["bias"].value.spec == P(None)
    assert fallbacks == [("bias", (6,), 24)]


def test_constrain_batch_splits_the_batch_only_inside_a_step_with_a_mesh():
    """Inside ``use_abstract_mesh`` (as the trainer traces its step) an activation's batch
    dimension is split over data x fsdp; outside, or when the batch does not divide, the
    array is returned as it is."""
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = parallel.create_mesh((2, 4, 1))
    rep = NamedSharding(mesh, P())

    def run(x, with_mesh):
        def f(x):
            if not with_mesh:
                return parallel.constrain_batch(x * 2.0)
            with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
                return parallel.constrain_batch(x * 2.0)
        return jax.jit(f, in_shardings=rep)(jax.device_put(x, rep))

    y = run(jnp.ones((16, 3, 5)), True)
    assert y.sharding.spec[0] == parallel.BATCH_AXES
    assert y.sharding.shard_shape(y.shape) == (2, 3, 5)
    assert float(y.sum()) == 2.0 * 16 * 15
    assert run(jnp.ones((16, 3)), False).sharding.is_fully_replicated
    assert run(jnp.ones((6, 3)), True).sharding.is_fully_replicated  # 6 rows over 8 shards
    assert parallel.constrain_batch(jnp.ones((16, 3))).shape == (16, 3)  # eager, no mesh
