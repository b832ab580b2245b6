"""``vasa-jax serve``: the web app (and its real-time WebSocket) for two trained runs."""

from __future__ import annotations

from vasa_jax.cli.common import UserError, user_errors

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(args) -> None:
    """Load and compile both stages once (the times are printed), then serve the page at
    http://HOST:PORT/ and the real-time socket at ws://HOST:PORT/ws/stream until stopped."""
    from vasa_jax.media import checks
    from vasa_jax.media.errors import InputError
    from vasa_jax.serve.service import TalkingFaceService

    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: use 1-65535.")
    if args.host not in LOOPBACK and not args.expose:
        raise UserError(f"--host {args.host!r} would let other machines use this server; add "
                        f"--expose to mean it (the default 127.0.0.1 serves this machine only).")
    checks.check_positive(args.max_seconds, "--max-seconds")
    try:
        import gradio  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise UserError(f"The web app needs its extra packages ({e.name} is missing): "
                        f"pip install -e '.[serve]'.") from None
    strides = tuple(int(s) for s in args.warm_stride)
    with user_errors(InputError, FileNotFoundError, ValueError):
        service = TalkingFaceService.from_workdirs(
            args.latent_workdir, args.motion_workdir, max_concurrent=args.max_concurrent,
            max_seconds=args.max_seconds, warm_strides=strides)
    print(f"Loaded both stages in {service.load_seconds:.1f} s; compiled in "
          f"{service.compile_seconds:.1f} s ({service.pipe.resolution} px, W = "
          f"{service.pipe.window}, up to {service.max_concurrent} generation(s) at once).",
          flush=True)
    try:
        if args.share:
            from vasa_jax.serve.app import build_app

            print("--share: a public Gradio link for the page (the real-time socket stays on "
                  "this machine).", flush=True)
            build_app(service).launch(server_name=args.host, server_port=args.port, share=True,
                                      ssr_mode=False)
            return
        import uvicorn

        from vasa_jax.serve.app import build_server  # noqa: F811

        app = build_server(service)
        print(f"Serving http://{args.host}:{args.port}/ (real time: "
              f"ws://{args.host}:{args.port}/ws/stream)", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        service.close()


def add_parser(sub) -> None:
    s = sub.add_parser("serve", help="a web page for talking faces (and a real-time "
                       "WebSocket) over two trained runs")
    s.add_argument("--latent-workdir", required=True, help="trained stage 1 (local or gs://)")
    s.add_argument("--motion-workdir", required=True,
                   help="stage 2 trained on that stage 1's latents (local or gs://)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: this machine only)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--expose", action="store_true",
                   help="allow a --host other machines can reach")
    s.add_argument("--share", action="store_true",
                   help="also make a public Gradio share link (needs internet)")
    s.add_argument("--max-concurrent", type=int, default=1,
                   help="generations at once; more requests wait in a queue")
    s.add_argument("--max-seconds", type=float, default=60.0,
                   help="the longest speech a request may bring")
    s.add_argument("--warm-stride", action="append", default=["5"], metavar="S",
                   help="low-latency strides to compile at start-up (real-time socket)")
    s.set_defaults(func=serve)
