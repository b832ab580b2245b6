"""The web app (``vasa-jax serve``) and its real-time WebSocket."""
