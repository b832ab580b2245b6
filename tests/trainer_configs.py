"""Test configs for trainer runs (a helper module the tests import)."""


def make_test_config(get_config, data_dir: str, **over):
    """``get_config("test")`` on ``data_dir``, logging every step, synchronous checkpoints, then
    the dotted-key overrides ``over`` (e.g. ``**{"train.steps": 8}``, ``mesh_shape=(1, 4, 2)``)."""
    c = get_config("test")
    c.data.data_dir = data_dir
    c.train.log_every = 1
    c.train.async_checkpoints = False
    for k, v in over.items():
        node = c
        *path, leaf = k.split(".")
        for p in path:
            node = node[p]
        node[leaf] = v
    return c
