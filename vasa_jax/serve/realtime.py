"""The real-time WebSocket: speech in small chunks, frames back as soon as each low-latency
window is committed (``TalkingFacePipeline.stream`` with stride S < W).

Protocol (``/ws/stream``):
  1. client -> text JSON: ``{"image": base64 photo (any format the CLI reads), "stride": S,
     "steps": n, "seed": s, "gaze": [theta, phi] | null, "distance": d | null,
     "emotion": name | null, "cfg": {"audio": 0.5, ...}}`` (all but ``image`` optional).
  2. server -> text JSON ``{"event": "ready", "resolution": R, "window": W, "stride": S,
     "fps": 25, "lookahead_frames": c}`` once the photo is checked and a slot is held.
  3. client -> binary messages: 16 kHz mono float32 little-endian samples, any sizes (40 ms =
     640 samples is a video frame); then text ``{"event": "end"}``.
  4. server -> a binary message per committed window: an ``.npy`` of (n, R, R, 3) uint8
     frames, as soon as it exists; at the end text ``{"event": "done", "frames": N}``.
  Errors: text ``{"event": "error", "message": ...}`` (the CLI's message for a bad photo),
  then the socket closes. A client that goes away mid-stream frees its slot at the next
  window boundary.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import queue
import threading

import numpy as np

from vasa_jax.media.errors import InputError
from vasa_jax.serve.service import Busy, TalkingFaceService, controls_from

SLOT_WAIT_SECONDS = 60.0


class _Gone(Exception):
    """The client left: stop generating."""


def frames_message(frames: np.ndarray) -> bytes:
    """(n, R, R, 3) uint8 -> the binary message (an .npy)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(frames, np.uint8), allow_pickle=False)
    return buf.getvalue()


def read_frames_message(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _chunks(q: queue.Queue, gone: threading.Event):
    """Audio pieces from the socket until the client's end; _Gone if the client left."""
    while True:
        item = q.get()
        if gone.is_set():
            raise _Gone()
        if item is None:
            return
        yield item


async def stream_endpoint(ws, service: TalkingFaceService) -> None:
    """One real-time session on an accepted-or-not Starlette ``WebSocket``."""
    from starlette.websockets import WebSocketDisconnect

    await ws.accept()
    loop = asyncio.get_running_loop()
    audio_q: queue.Queue = queue.Queue()
    out_q: asyncio.Queue = asyncio.Queue()
    gone = threading.Event()

    def put(item):
        loop.call_soon_threadsafe(out_q.put_nowait, item)

    def work(hello: dict, photo: bytes) -> None:
        """The generation, in a worker thread: holds a slot and a request folder for the whole
        session (the folder is gone before the slot is free)."""
        try:
            with service.slot(timeout=SLOT_WAIT_SECONDS), service.request_dir() as folder:
                photo_path = os.path.join(folder, "photo")
                with open(photo_path, "wb") as f:
                    f.write(photo)
                source = service.source(photo_path)
                pipe = service.pipe
                stride = int(hello.get("stride") or pipe.window)
                if not 1 <= stride <= pipe.window:
                    raise InputError(f"stride {stride}: use 1-{pipe.window} frames.")
                c = controls_from(pipe.defaults, gaze=hello.get("gaze"),
                                  distance=hello.get("distance"), emotion=hello.get("emotion"),
                                  cfg=hello.get("cfg"), steps=hello.get("steps"),
                                  seed=int(hello.get("seed") or 0))
                put({"event": "ready", "resolution": pipe.resolution, "window": pipe.window,
                     "stride": stride, "fps": 25,
                     "lookahead_frames": pipe.frontend.context_frames})
                n = 0
                for frames in pipe.stream(source, _chunks(audio_q, gone), c, stride=stride):
                    n += len(frames)
                    put(frames_message(frames))
                put({"event": "done", "frames": n})
        except _Gone:
            pass
        except (InputError, Busy, ValueError) as e:
            put({"event": "error", "message": str(e)})
        except Exception as e:  # noqa: BLE001 - reported to the client, the server keeps going
            put({"event": "error", "message": f"generation failed: {type(e).__name__}: {e}"})
        finally:
            put(None)

    async def receive() -> None:
        try:
            while True:
                msg = await ws.receive()
                if msg.get("type") == "websocket.disconnect":
                    raise WebSocketDisconnect()
                if msg.get("bytes") is not None:
                    audio_q.put(np.frombuffer(msg["bytes"], "<f4").astype(np.float32))
                elif json.loads(msg.get("text") or "{}").get("event") == "end":
                    audio_q.put(None)
                    return
        except WebSocketDisconnect:
            gone.set()
            audio_q.put(None)

    try:
        hello = json.loads(await ws.receive_text())
        photo = base64.b64decode(hello.get("image") or "", validate=True)
    except WebSocketDisconnect:
        return
    except (ValueError, TypeError) as e:
        await ws.send_json({"event": "error", "message": f"bad first message: {e}; send "
                            "JSON with the photo base64-encoded in \"image\"."})
        await ws.close()
        return
    worker = threading.Thread(target=work, args=(hello, photo), daemon=True)
    worker.start()
    receiver = asyncio.create_task(receive())
    try:
        while (item := await out_q.get()) is not None:
            if isinstance(item, bytes):
                await ws.send_bytes(item)
            else:
                await ws.send_json(item)
                if item["event"] == "error":
                    break
    except WebSocketDisconnect:
        gone.set()
        audio_q.put(None)
    finally:
        if not receiver.done():
            receiver.cancel()
        gone.set()  # stop the worker if the session ended early (error, disconnect)
        audio_q.put(None)
        await asyncio.to_thread(worker.join)
    try:
        await ws.close()
    except (RuntimeError, WebSocketDisconnect):  # already closed by the client
        pass
