"""``vasa-jax serve``'s web app: one page (Gradio) where a person picks or uploads a portrait,
uploads or records speech, sets the controls and presses Generate; frames appear window by
window, then the marked mp4 plays (and downloads) with its ``verify`` report beside it. The
same server answers the real-time WebSocket (``vasa_jax.serve.realtime``) at ``/ws/stream``.

``build_server`` gives the ASGI app (FastAPI: the page at ``/``, the socket at
``/ws/stream``); ``build_app`` gives the page alone (a ``gradio.Blocks``; ``.launch(share=True)``
in a notebook gives a public link).
"""

from __future__ import annotations

import os
from typing import Any

from vasa_jax.media.errors import InputError
from vasa_jax.pipeline import EMOTIONS
from vasa_jax.serve.service import Busy, TalkingFaceService, controls_from

TITLE = "vasa_jax: a talking face from one photo and a speech track"
NOTICE = ("Every video made here carries an invisible watermark and a signed C2PA manifest "
          "declaring it AI-generated (the check is shown beside it). Do not use it to "
          "impersonate real people or to deceive.")
AUTO = "model's choice"


def example_photos(folder: str, resolution: int) -> list[str]:
    """Example portraits written into ``folder``: scikit-image's astronaut (a real photo; the
    face is found and cropped) and a SynthTalk identity's first frame."""
    import skimage.data
    from PIL import Image

    from data_pipeline.synthtalk.generate import generate_clip

    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, "astronaut.png"), os.path.join(folder, "synthtalk_person.png")]
    Image.fromarray(skimage.data.astronaut()).save(paths[0])
    frame = generate_clip(0, 950, 0, 1, max(256, resolution))["frames"][0]
    Image.fromarray(frame).save(paths[1])
    return paths


def _verify_text(report) -> str:
    return "\n".join(report.lines()[1:])


def run_request(service: TalkingFaceService, photo: str | None, audio: str | None,
                use_gaze: bool, theta: float, phi: float, use_distance: bool,
                distance: float, emotion: str, cfg_audio: float, cfg_gaze: float,
                cfg_distance: float, cfg_emotion: float, steps: float, seed: float):
    """The page's Generate: yields (preview frame, status markdown, video path, verify text)
    as the request goes. Bad input ends it with the CLI's message in the status."""
    from vasa_jax.media.video_io import resize_frames

    try:
        controls = controls_from(
            service.pipe.defaults, gaze=(theta, phi) if use_gaze else None,
            distance=distance if use_distance else None,
            emotion=None if emotion == AUTO else emotion,
            cfg={"audio": cfg_audio, "gaze": cfg_gaze, "distance": cfg_distance,
                 "emotion": cfg_emotion}, steps=int(steps), seed=int(seed))
        yield None, "Waiting for a free generation slot...", None, ""
        with service.slot(), service.request_dir() as folder:
            yield None, "Checking the photo and the speech...", None, ""
            last = None
            for ev in service.generate(photo, audio, controls, folder):
                if ev["event"] == "window":
                    last = resize_frames(ev["frames"][-1:], service.size)[0]
                    yield (last, f"Generating: {ev['done']} of {ev['total']} frames "
                           f"({ev['done'] / ev['total']:.0%})", None, "")
                else:
                    report = ev["verify"]
                    ok = report.watermark.detected and report.manifest.status == "valid"
                    marks = ("watermark and C2PA manifest verified" if ok else
                             "MARKS NOT VERIFIED")
                    yield (last, f"**Done**: {report.watermark.num_frames} frames; {marks}.",
                           ev["path"], _verify_text(report))
    except (InputError, Busy) as e:
        yield None, f"**Error:** {e}", None, ""


def build_app(service_or_latent: TalkingFaceService | str, motion_workdir: str | None = None,
              **service_kwargs: Any):
    """The page (a ``gradio.Blocks``) for a service, or for two trained runs (a service is
    started for them: models loaded and compiled now)."""
    import gradio as gr

    service = (service_or_latent if isinstance(service_or_latent, TalkingFaceService) else
               TalkingFaceService.from_workdirs(service_or_latent, motion_workdir,
                                                **service_kwargs))
    d = service.pipe.defaults
    cfg = dict(d.cfg)
    examples = example_photos(os.path.join(service.work_root, "examples"),
                              service.pipe.resolution)
    with gr.Blocks(title="vasa_jax", analytics_enabled=False,
                   delete_cache=(600, 3600)) as page:
        gr.Markdown(f"# {TITLE}\n{NOTICE}")
        with gr.Row():
            with gr.Column():
                photo = gr.Image(type="filepath", sources=["upload"], label="Portrait photo",
                                 elem_id="photo")
                gr.Examples(examples=[[p] for p in examples], inputs=[photo],
                            label="Example portraits")
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath",
                                 label="Speech (upload or record)", elem_id="speech")
                with gr.Accordion("Controls", open=False):
                    with gr.Row():
                        use_gaze = gr.Checkbox(False, label="set gaze")
                        theta = gr.Slider(-0.6, 0.6, 0.0, step=0.05, label="gaze theta (rad)")
                        phi = gr.Slider(-0.6, 0.6, 0.0, step=0.05, label="gaze phi (rad)")
                    with gr.Row():
                        use_distance = gr.Checkbox(False, label="set head distance")
                        distance = gr.Slider(-2.0, 2.0, 0.0, step=0.1,
                                             label="head distance (normalised)")
                    emotion = gr.Dropdown([AUTO, *EMOTIONS], value=AUTO, label="emotion")
                    with gr.Row():
                        cfg_widgets = [gr.Slider(0.0, 3.0, float(cfg.get(c, 0.0)), step=0.1,
                                                 label=f"CFG {c}")
                                       for c in ("audio", "gaze", "distance", "emotion")]
                    with gr.Row():
                        steps = gr.Slider(1, 100, int(d.steps), step=1, label="denoising steps")
                        seed = gr.Number(0, precision=0, label="seed")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                status = gr.Markdown("Pick a portrait and a speech recording, then Generate.",
                                     elem_id="status")
                preview = gr.Image(label="Latest frame", interactive=False, elem_id="preview")
                video = gr.Video(label="Result (watermarked, C2PA-signed)", interactive=False,
                                 elem_id="result")
                verify = gr.Textbox(label="verify", lines=5, interactive=False,
                                    elem_id="verify")

        def go(*values):
            yield from run_request(service, *values)

        button.click(go, [photo, audio, use_gaze, theta, phi, use_distance, distance, emotion,
                          *cfg_widgets, steps, seed], [preview, status, video, verify])
    page.queue(default_concurrency_limit=service.max_concurrent)
    page.vasa_service = service  # the service the page runs on (tests, the server's shutdown)
    return page


def build_server(service: TalkingFaceService):
    """The ASGI app: the page at ``/``, the real-time WebSocket at ``/ws/stream``, and
    ``/health`` (JSON: generations running, slots, load and compile seconds)."""
    import gradio as gr
    from fastapi import FastAPI
    from starlette.routing import WebSocketRoute

    from vasa_jax.serve.realtime import stream_endpoint

    api = FastAPI(title="vasa_jax", on_shutdown=[service.close])

    @api.get("/health")
    def health() -> dict:
        return {"running": service.running, "slots": service.max_concurrent,
                "load_seconds": round(service.load_seconds, 1),
                "compile_seconds": round(service.compile_seconds, 1),
                "resolution": service.pipe.resolution, "window": service.pipe.window}

    async def ws_stream(ws) -> None:
        await stream_endpoint(ws, service)

    api.router.routes.append(WebSocketRoute("/ws/stream", ws_stream))

    page = build_app(service)
    return gr.mount_gradio_app(api, page, path="/", ssr_mode=False,
                               allowed_paths=[os.path.join(service.work_root, "examples")])
