"""``python -m vasa_jax.cli``: the ``vasa-jax`` command."""

import sys

from vasa_jax.cli import main

sys.exit(main())
