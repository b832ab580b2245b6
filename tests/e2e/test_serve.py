"""``vasa-jax serve``: the service behind the page, the real-time WebSocket, bad input, slots
freed by clients that leave, nothing left on disk, and the page in a real browser (upload the
astronaut photo and espeak-ng speech, Generate, a verified video; corrupt audio shows the error
and the server keeps serving)."""

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest
import skimage.data
from PIL import Image

from vasa_jax import cli
from vasa_jax.media.errors import InputError

pytestmark = pytest.mark.slow
STRIDE = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(generation_workdirs, tmp_path_factory):
    from vasa_jax.serve.service import TalkingFaceService

    os.environ.setdefault("VASA_JAX_C2PA_DIR", str(tmp_path_factory.mktemp("c2pa")))
    s = TalkingFaceService.from_workdirs(
        *generation_workdirs, max_concurrent=1, max_seconds=10.0, warm_strides=(STRIDE,),
        work_root=str(tmp_path_factory.mktemp("serve_work")))
    yield s
    s.close()


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("inputs") / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(path)
    return str(path)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> str:
    """Real speech: SynthTalk's synthesised clip audio (3 s) as a wav."""
    import soundfile

    from data_pipeline.synthtalk.generate import generate_clip

    path = tmp_path_factory.mktemp("inputs") / "speech.wav"
    soundfile.write(path, generate_clip(0, 950, 0, 75, 64)["audio"], 16000)
    return str(path)


@pytest.fixture(scope="module")
def server(service):
    """The ASGI app on a free loopback port, in a thread: its base URL."""
    import uvicorn

    from vasa_jax.serve.app import build_server

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(build_server(service), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not srv.started and time.time() < deadline:
        time.sleep(0.1)
    assert srv.started
    yield f"127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=30)


def _leftovers(service) -> list[str]:
    return [n for n in os.listdir(service.work_root) if n != "examples"]


def test_a_request_gives_a_marked_video_window_by_window_and_leaves_nothing(service, photo,
                                                                           speech):
    from vasa_jax.media.video_io import read_mp4

    c = service.pipe.defaults
    with service.request_dir() as folder:
        events = list(service.generate(photo, speech, c, folder))
        windows = [e for e in events if e["event"] == "window"]
        assert len(windows) == -(-75 // service.pipe.window) and windows[-1]["done"] == 75
        (done,) = [e for e in events if e["event"] == "video"]
        frames, audio, fps, _ = read_mp4(done["path"])
        assert len(frames) == 75 and frames.shape[1] == service.size and fps == 25
        assert done["verify"].watermark.detected and done["verify"].manifest.status == "valid"
    assert _leftovers(service) == []


@pytest.mark.parametrize("what,make,message", [
    ("photo", lambda p: p.write_bytes(b"not an image"), "photo|image"),
    ("photo", lambda p: Image.fromarray(np.full((256, 256, 3), 90, np.uint8)).save(p),
     "face"),
    ("speech", lambda p: p.write_bytes(b"RIFF0000WAVEjunk"), "decode|read|corrupt"),
    ("speech", lambda p: __import__("soundfile").write(p, np.zeros(16000, np.float32), 16000),
     "silent"),
    ("speech", lambda p: __import__("soundfile").write(
        p, 0.1 * np.sin(np.arange(16000 * 12) / 9.0).astype(np.float32), 16000), "long")])
def test_bad_input_gives_the_cli_message_and_nothing_is_left(service, photo, speech, tmp_path,
                                                             what, make, message):
    bad = tmp_path / ("bad.png" if what == "photo" else "bad.wav")
    make(bad)
    args = (str(bad), speech) if what == "photo" else (photo, str(bad))
    with pytest.raises(InputError, match=f"(?i){message}"):
        with service.request_dir() as folder:
            list(service.generate(*args, service.pipe.defaults, folder))
    assert _leftovers(service) == []


def test_the_page_handler_reports_bad_input_in_the_status(service, photo, tmp_path):
    from vasa_jax.serve.app import AUTO, run_request

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"junk")
    out = list(run_request(service, photo, str(bad), False, 0.0, 0.0, False, 0.0, AUTO, 0.5,
                           1.0, 0.0, 0.0, 2, 0))
    assert out[-1][1].startswith("**Error:**") and "bad.wav" in out[-1][1]
    assert out[-1][2] is None and service.running == 0


async def _stream(url: str, photo: str, audio: np.ndarray, *, stride: int, pace: float = 0.0,
                  leave_after: int | None = None) -> dict:
    """A real-time client: the photo, then 40 ms chunks (every ``pace`` seconds), then end;
    returns the frames and how many chunks had been sent when each window arrived."""
    import websockets

    chunks = np.split(audio, np.arange(640, audio.size, 640))
    sent, got, arrivals = [0], [], []
    async with websockets.connect(f"ws://{url}/ws/stream", max_size=None) as ws:
        await ws.send(json.dumps({"image": base64.b64encode(open(photo, "rb").read()).decode(),
                                  "stride": stride}))  # the controls compiled at start-up
        ready = json.loads(await ws.recv())
        assert ready["event"] == "ready", ready

        async def send():
            for c in chunks:
                await ws.send(c.astype("<f4").tobytes())
                sent[0] += 1
                if leave_after is not None and sent[0] >= leave_after:
                    return
                await asyncio.sleep(pace)
            await ws.send(json.dumps({"event": "end"}))

        sender = asyncio.create_task(send())
        if leave_after is not None:
            await sender
            return {"ready": ready}
        while True:
            msg = await ws.recv()
            if isinstance(msg, bytes):
                from vasa_jax.serve.realtime import read_frames_message

                got.append(read_frames_message(msg))
                arrivals.append(sent[0])
            else:
                end = json.loads(msg)
                break
        await sender
    return {"ready": ready, "frames": got, "arrivals": arrivals, "end": end,
            "chunks": len(chunks)}


def test_the_websocket_streams_low_latency_frames_before_the_speech_ends(server, service,
                                                                         photo, speech):
    """40 ms chunks at real time: frames arrive while audio is still being sent, and they
    are the pipeline's low-latency output for the same audio."""
    from vasa_jax.media.audio import load_speech

    audio = load_speech(speech)
    r = asyncio.run(_stream(server, photo, audio, stride=STRIDE, pace=0.04))
    assert r["end"] == {"event": "done", "frames": 75}
    assert r["arrivals"][0] < r["chunks"]  # the first frames came before the speech ended
    c = service.pipe.defaults
    want = np.concatenate(list(service.pipe.stream(service.source(photo), [audio], c,
                                                   stride=STRIDE)))
    np.testing.assert_array_equal(np.concatenate(r["frames"]), want)


def test_a_client_that_leaves_frees_its_slot_and_bad_input_is_reported(server, service, photo,
                                                                       tmp_path):
    tone = (0.2 * np.sin(np.arange(16000 * 3) / 5.0)).astype(np.float32)
    asyncio.run(_stream(server, photo, tone, stride=STRIDE, leave_after=20))
    deadline = time.time() + 60
    while service.running and time.time() < deadline:
        time.sleep(0.2)
    assert service.running == 0
    assert _leftovers(service) == []
    health = json.loads(urllib.request.urlopen(f"http://{server}/health").read())
    assert health["running"] == 0 and health["slots"] == 1

    async def bad_photo():
        import websockets

        async with websockets.connect(f"ws://{server}/ws/stream") as ws:
            await ws.send(json.dumps({"image": base64.b64encode(b"junk").decode()}))
            return json.loads(await ws.recv())

    err = asyncio.run(bad_photo())
    assert err["event"] == "error" and "photo" in err["message"].lower()
    r = asyncio.run(_stream(server, photo, tone, stride=STRIDE))  # the server keeps serving
    assert r["end"]["frames"] == 75


def test_serve_refuses_an_exposed_host_and_a_missing_run(capsys, tmp_path):
    assert cli.main(["serve", "--latent-workdir", str(tmp_path), "--motion-workdir",
                     str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "--expose" in capsys.readouterr().err
    assert cli.main(["serve", "--latent-workdir", str(tmp_path / "nope"), "--motion-workdir",
                     str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err


# -- the page in a real browser: Debian's headless Chromium driven by Selenium (through the
# system chromedriver; nothing is downloaded). Screenshots go to $VASA_JAX_SCREENSHOTS (default:
# the test's folder); the README's are made this way.
needs_browser = pytest.mark.skipif(
    not shutil.which("chromedriver") or not shutil.which("chromium"),
    reason="needs Debian's chromium and chromium-driver (.ci/system-packages installs them)")


@pytest.fixture(scope="module")
def espeak_speech(tmp_path_factory) -> str:
    if not shutil.which("espeak-ng"):
        pytest.skip("needs espeak-ng (apt-get install espeak-ng)")
    path = tmp_path_factory.mktemp("speech") / "hello.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Hello. This face was made from one photo."],
                   check=True)
    return str(path)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,1400"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    yield driver
    driver.quit()


def _shots(tmp_path) -> str:
    folder = os.environ.get("VASA_JAX_SCREENSHOTS") or str(tmp_path)
    os.makedirs(folder, exist_ok=True)
    return folder


def _upload(driver, elem_id: str, path: str) -> None:
    """Put a file into a Gradio upload component (its hidden file input)."""
    from selenium.webdriver.common.by import By

    inp = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=file]")
    driver.execute_script("arguments[0].style.display = 'block';", inp)
    inp.send_keys(path)


def _status(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "status").text


def _wait(driver, cond, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; status: {_status(driver)!r}")


def _open(driver, server: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"http://{server}/")
    _wait(driver, lambda: driver.find_elements(By.ID, "generate"), 60, "the page")


@needs_browser
def test_the_page_generates_a_verified_video(browser, server, photo, espeak_speech, tmp_path):
    from selenium.webdriver.common.by import By

    from vasa_jax.media.video_io import read_mp4
    from vasa_jax.safety.publish import verify_video

    shots = _shots(tmp_path)
    _open(browser, server)
    browser.save_screenshot(os.path.join(shots, "serve_idle.png"))
    _upload(browser, "photo", photo)
    _upload(browser, "speech", espeak_speech)
    _wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#speech audio, #speech "
                                                 "button[aria-label*='lay']"), 30,
          "the speech to load")
    browser.find_element(By.ID, "generate").click()
    _wait(browser, lambda: "Generating" in _status(browser) or "Done" in _status(browser), 120,
          "generation to start")
    browser.save_screenshot(os.path.join(shots, "serve_generating.png"))
    src = _wait(browser, lambda: [v.get_attribute("src") for v in
                                  browser.find_elements(By.CSS_SELECTOR, "#result video")
                                  if v.get_attribute("src")], 300, "the video")[0]
    assert "Done" in _status(browser) and "verified" in _status(browser)
    report = browser.find_element(By.CSS_SELECTOR, "#verify textarea").get_attribute("value")
    assert "watermark: DETECTED" in report and "C2PA manifest: VALID" in report
    browser.save_screenshot(os.path.join(shots, "serve_done.png"))
    video = tmp_path / "downloaded.mp4"
    video.write_bytes(urllib.request.urlopen(src).read())
    frames, audio, fps, _ = read_mp4(video)
    import soundfile

    seconds = soundfile.info(espeak_speech).duration
    assert fps == 25 and abs(len(frames) - round(seconds * 25)) <= 1
    assert verify_video(str(video)).manifest.status == "valid"


@needs_browser
def test_corrupt_audio_shows_the_error_and_the_server_keeps_serving(browser, server, service,
                                                                    photo, tmp_path):
    from selenium.webdriver.common.by import By

    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    _open(browser, server)
    _upload(browser, "photo", photo)
    _upload(browser, "speech", str(bad))
    time.sleep(2)
    browser.find_element(By.ID, "generate").click()
    text = _wait(browser, lambda: "Error" in _status(browser) and _status(browser), 120,
                 "the error")
    assert "corrupt.wav" in text and "Traceback" not in browser.page_source
    assert urllib.request.urlopen(f"http://{server}/health").status == 200
    assert service.running == 0
