"""The Gradio demo as a Space runs it: `demo/` copied alone into an empty folder, `python app.py --port P` there with
`STOP_DEMO_MODEL` set to the committed model folder and an empty PYTHONPATH, driven by gradio_client (and headless
Chromium when it is installed).

The server runs under an import hook that refuses the repository's packages (`modeling_stop`, `training`,
`benchmarks`, `demo`, `tests`), which the shared virtual environment would otherwise find through its editable
install: the model's code can only come from the model folder (`trust_remote_code`). The gallery is the model
folder's `gallery/`: twelve held-out synthetic clips, six reversed pairs.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from training.synthetic import write_benchmark, write_video

REPO = Path(__file__).resolve().parents[1]
TRAINED_MODEL = REPO / "checkpoints" / "stop-synthetic"
GALLERY = TRAINED_MODEL / "gallery" / "test"
CHROMIUM = Path("/usr/bin/chromium")
MAX_DURATION_S = 20
MAX_FRAMES = 100
MAX_UPLOADS = 2
STARTUP_TIMEOUT_S = 180
REPOSITORY_PACKAGES = ("modeling_stop", "training", "benchmarks", "demo", "tests")
# Runs app.py as `python app.py ARGS` would, with the repository's packages made unimportable.
ISOLATED_RUN = f"""
import importlib.abc, runpy, sys
class RefuseRepository(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {REPOSITORY_PACKAGES!r}:
            raise ModuleNotFoundError(f"the demo imported {{name}}, which is not in the demo folder")
sys.meta_path.insert(0, RefuseRepository())
sys.argv = ["app.py", *sys.argv[1:]]
runpy.run_path("app.py", run_name="__main__")
"""

pytestmark = pytest.mark.slow
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402


@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="stop-demo-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def gallery_rows():
    return [json.loads(line) for line in (GALLERY / "metadata.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def outsider(workdir):
    """A held-out clip that is not in the gallery (another seed), to upload."""
    write_benchmark(workdir / "other", seed=1, num_train=0, num_validation=0, num_test=2)
    return Path(shutil.copy(workdir / "other" / "test" / "00000a.mp4", workdir / "outsider.mp4"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, log: Path):
        self.url, self.log = url, log

    def log_text(self) -> str:
        return self.log.read_text()


@pytest.fixture(scope="module")
def server(workdir):
    space = workdir / "space"  # an empty folder holding only a copy of demo/
    shutil.copytree(REPO / "demo", space, ignore=shutil.ignore_patterns("__pycache__", ".cache"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(
        os.environ,
        PYTHONPATH="",
        STOP_DEMO_MODEL=str(TRAINED_MODEL.resolve()),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_MODULES_CACHE=str(workdir / "modules"),
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(workdir / "gradio"),
        PYTHONUNBUFFERED="1",
    )
    log_path = workdir / "server.log"
    log = open(log_path, "w")
    command = [
        sys.executable,
        "-c",
        ISOLATED_RUN,
        "--port",
        str(port),
        "--cache_dir",
        str(workdir / "cache"),
        "--max_duration_s",
        str(MAX_DURATION_S),
        "--max_frames",
        str(MAX_FRAMES),
        "--max_uploads",
        str(MAX_UPLOADS),
    ]
    process = subprocess.Popen(command, cwd=space, env=env, stdout=log, stderr=subprocess.STDOUT)
    start = time.monotonic()
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"demo exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            if time.monotonic() - start > STARTUP_TIMEOUT_S:
                pytest.fail(f"demo not up after {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield Server(url, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False)


def test_the_copied_demo_serves_the_model_folders_gallery(server, client):
    assert "demo built" in server.log_text() and "12 gallery videos" in server.log_text()
    _, table = client.predict("anything", 12, api_name="/search")
    assert sorted(row[2] for row in table["data"]) == sorted(p.name for p in GALLERY.glob("*.mp4"))


def test_endpoints_and_their_outputs_have_names(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/search", "/recognize", "/explain", "/add_video"} <= set(endpoints)
    for name, endpoint in endpoints.items():
        for item in [*endpoint["parameters"], *endpoint["returns"]]:
            assert item["label"] and not re.fullmatch(r"value_\d+", item["label"]), (name, item)
    assert [r["label"] for r in endpoints["/search"]["returns"]] == ["Best matches", "Scores"]


def test_search_returns_playable_videos_with_descending_scores(client, gallery_rows):
    videos, table = client.predict(gallery_rows[0]["caption"], 3, api_name="/search")
    assert len(videos) == 3 and len(table["data"]) == 3
    assert table["headers"] == ["rank", "score", "video", "caption", "source"]
    scores = [row[1] for row in table["data"]]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    names = {row["file_name"] for row in gallery_rows}
    for item, row in zip(videos, table["data"]):
        assert Path(item["video"]).suffix == ".mp4" and Path(item["video"]).stat().st_size > 0
        rank, score = item["caption"].split(" · ")[0].split(". ")
        assert row[2] in names and int(rank) == row[0] and float(score) == pytest.approx(row[1], abs=1e-3)


def test_search_ranks_the_clip_of_an_exact_caption_near_the_top(client, gallery_rows):
    ranks = []
    for row in gallery_rows:
        if row["reversed"]:
            continue
        _, table = client.predict(row["caption"], 12, api_name="/search")
        ranks.append([r[2] for r in table["data"]].index(row["file_name"]) + 1)
    # Twelve clips, each with its reversed twin, so chance is a mean rank of 6.5 and "its pair on top" is ranks 1-2.
    # Measured with the first default model (blind to order): [2, 2, 2, 1, 1, 2]; the two-stage default tells most
    # twins apart (README), so this bound is loose for it.
    assert max(ranks) <= 3 and sum(ranks) / len(ranks) <= 2.0, ranks


def test_the_results_slider_spans_the_gallery(server):
    with urllib.request.urlopen(server.url + "config", timeout=10) as response:
        config = json.loads(response.read())
    slider = next(c for c in config["components"] if c.get("props", {}).get("label") == "Results")
    assert slider["props"]["maximum"] == 12


def test_labels_go_through_the_template_of_the_models_zero_shot_pipeline(server):
    with urllib.request.urlopen(server.url + "config", timeout=10) as response:
        config = json.loads(response.read())
    texts = [c["props"].get("value") or "" for c in config["components"] if c.get("type") == "markdown"]
    assert any("each label becomes the text “a video of label”" in text for text in texts)  # pipelines.py default


def test_zero_results_is_a_clear_error_without_a_traceback(server, client):
    with pytest.raises(AppError, match="The number of results must be a whole number of at least 1, got 0"):
        client.predict("a red circle", 0, api_name="/search")
    assert "Traceback" not in server.log_text()


def test_recognize_returns_a_probability_per_label(client):
    labels = ["moving left", "moving right", "growing"]
    result = client.predict(handle_file(GALLERY / "00002a.mp4"), ", ".join(labels), api_name="/recognize")
    confidences = {c["label"]: c["confidence"] for c in result["confidences"]}
    assert set(confidences) == set(labels) and result["label"] == max(confidences, key=confidences.get)
    assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-5)


def test_explain_shows_every_sampled_frame_and_is_computed_once_per_video(server, client, outsider):
    from PIL import Image

    num_frames = json.loads((TRAINED_MODEL / "processor_config.json").read_text())["video_processor"]["num_frames"]
    runs = []
    for _ in range(2):
        before = server.log_text().count(f"analysed {outsider.name}")
        frames, plot, summary, layer = client.predict(handle_file(outsider), 1, api_name="/explain")
        runs.append(server.log_text().count(f"analysed {outsider.name}") - before)
    assert runs == [1, 0]  # the second request reuses the analysis of the same bytes
    assert len(frames) == num_frames
    assert all(Path(f["image"]).is_file() and f["caption"].startswith("frame ") for f in frames)
    assert Image.open(frames[0]["image"]).size[0] >= 256
    assert np.asarray(Image.open(plot)).std() > 0
    # the default model prompts in every vision layer (paper_version 2): per-layer regions, a layer selector
    config = json.loads((TRAINED_MODEL / "config.json").read_text())
    num_layers = len(config["paper_prompt_layers"] or range(config["vision_config"]["num_hidden_layers"]))
    assert f"`spatial_mask_per_layer` at layer 1 of {num_layers}" in summary
    assert "`inserted_tokens` per gap" in summary
    assert layer["visible"] is True and layer["maximum"] == num_layers


def test_an_added_video_joins_that_sessions_gallery_only(server, client, outsider):
    session = Client(server.url, verbose=False)
    status, _, slider = session.predict(handle_file(outsider), api_name="/add_video")
    assert "13 videos" in status and slider["maximum"] == 13
    _, table = session.predict("anything", 13, api_name="/search")
    assert outsider.name in [row[2] for row in table["data"]]
    _, table = client.predict("anything", 13, api_name="/search")  # another session: the twelve clips
    assert len(table["data"]) == 12 and outsider.name not in [row[2] for row in table["data"]]
    again, _, _ = session.predict(handle_file(outsider), api_name="/add_video")
    assert again == f"**{outsider.name}** is already in your gallery; it was not added again."


def test_re_adding_a_gallery_video_says_it_is_there(client):
    status, _, slider = client.predict(handle_file(GALLERY / "00001a.mp4"), api_name="/add_video")
    assert status == "**00001a.mp4** is already in the gallery; it was not added again." and slider["maximum"] == 12


def test_a_session_keeps_its_latest_uploads_only(server, workdir):
    write_benchmark(workdir / "more", seed=2, num_train=0, num_validation=0, num_test=2 * (MAX_UPLOADS + 1))
    session = Client(server.url, verbose=False)
    clips = [
        Path(shutil.copy(clip, workdir / f"upload-{i}.mp4"))
        for i, clip in enumerate(sorted((workdir / "more" / "test").glob("*a.mp4")))
    ]
    for clip in clips:
        status, _, _ = session.predict(handle_file(clip), api_name="/add_video")
    assert f"Your oldest upload, {clips[0].name}, was removed (at most {MAX_UPLOADS} per session)" in status
    _, table = session.predict("anything", 20, api_name="/search")
    assert len(table["data"]) == 12 + MAX_UPLOADS and clips[0].name not in [row[2] for row in table["data"]]


@pytest.mark.parametrize("endpoint", ["/recognize", "/explain", "/add_video"])
def test_a_corrupt_upload_is_a_clear_error(client, workdir, endpoint):
    corrupt = workdir / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4000))
    args = (handle_file(corrupt), "a, b") if endpoint == "/recognize" else (handle_file(corrupt),)
    with pytest.raises(AppError, match="Cannot read corrupt.mp4: it is not a video file, or it is corrupt"):
        client.predict(*args, api_name=endpoint)


def test_a_too_long_video_is_refused(client, workdir):
    long_video = workdir / "long.mp4"
    write_video(long_video, np.zeros((MAX_DURATION_S + 2, 32, 32, 3), np.uint8), fps=1)
    with pytest.raises(AppError, match=f"long.mp4 lasts 22 s; this demo takes videos up to {MAX_DURATION_S} s"):
        client.predict(handle_file(long_video), "a, b", api_name="/recognize")


def test_videos_with_too_many_frames_or_too_high_a_frame_rate_are_refused_before_decoding(server, client, workdir):
    many = workdir / "many.mp4"
    write_video(many, np.zeros((MAX_FRAMES + 20, 16, 16, 3), np.uint8), fps=30)  # 4 s: within the duration
    fast = workdir / "fast.mp4"
    write_video(fast, np.zeros((12, 16, 16, 3), np.uint8), fps=2500)  # 5 ms
    with pytest.raises(
        AppError, match=f"many.mp4 has {MAX_FRAMES + 20} frames; this demo takes videos of up to {MAX_FRAMES} frames"
    ):
        client.predict(handle_file(many), api_name="/explain")
    with pytest.raises(AppError, match="fast.mp4 has 2500 frames per second; this demo takes up to 60 fps"):
        client.predict(handle_file(fast), api_name="/explain")
    assert "analysed many.mp4" not in server.log_text() and "analysed fast.mp4" not in server.log_text()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (CI installs it: apt-get install chromium)")
def test_page_renders_the_three_tabs_in_a_browser(server, workdir):
    from PIL import Image

    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=15000",
        "--window-size=1280,900",
    ]
    shot = workdir / "shot.png"
    subprocess.run(
        [str(CHROMIUM), *flags, f"--user-data-dir={tempfile.mkdtemp(dir=workdir)}", f"--screenshot={shot}", server.url],
        check=True,
        capture_output=True,
        timeout=90,
    )
    pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert pixels.shape == (900, 1280) and pixels.std() > 10  # not a blank page
    dom = subprocess.run(
        [str(CHROMIUM), *flags, f"--user-data-dir={tempfile.mkdtemp(dir=workdir)}", "--dump-dom", server.url],
        check=True,
        capture_output=True,
        text=True,
        timeout=90,
    ).stdout
    for tab in ("Search", "Recognize", "What STOP looks at"):
        assert f">{tab}<" in dom, tab
