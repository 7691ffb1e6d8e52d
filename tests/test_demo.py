"""The Gradio demo, end to end: a real server in a subprocess, driven by gradio_client and headless Chromium.

The server runs the trained model (`checkpoints/stop-synthetic/`) when it is there, else a tiny random STOP model
saved for the test; only the retrieval-quality assertion needs the trained one. The gallery is four held-out
synthetic clips, one per reversed pair.
"""

import json
import os
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
CHROMIUM = Path("/usr/bin/chromium")
MAX_DURATION_S = 20
STARTUP_TIMEOUT_S = 180

pytestmark = pytest.mark.slow
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402


def _tiny_model(folder: Path) -> Path:
    """A random official-variant STOP model (32 px frames, 4 x 4 grid) with a byte-level CLIP tokenizer."""
    from transformers import CLIPTokenizer

    from modeling_stop.processing_stop import STOPProcessor, STOPVideoProcessor
    from tests.tiny import tiny_stop
    from training.tokenizer import bytes_to_unicode

    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    model = tiny_stop(clip_kwargs=dict(image_size=32, patch_size=8, vocab=len(vocab)), num_frames=8, max_words=32)
    model.save_pretrained(folder)
    STOPProcessor(STOPVideoProcessor(num_frames=8, size=32), tokenizer, max_words=32).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="stop-demo-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def model_dir(workdir):
    if (TRAINED_MODEL / "config.json").is_file():
        return TRAINED_MODEL
    return _tiny_model(workdir / "tiny-model")


@pytest.fixture(scope="module")
def clips(workdir):
    """Four held-out clips from different pairs (the gallery) and the reversed twin of the first (to upload)."""
    source = workdir / "benchmark"
    write_benchmark(source, num_train=0, num_validation=0, num_test=8)
    rows = [json.loads(line) for line in (source / "test" / "metadata.jsonl").read_text().splitlines()]
    gallery = workdir / "gallery"
    gallery.mkdir()
    kept = [row for row in rows if not row["reversed"]]
    for row in kept:
        shutil.copy(source / "test" / row["file_name"], gallery / row["file_name"])
    (gallery / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in kept))
    twin = next(row for row in rows if row["reversed"] and row["pair_id"] == kept[0]["pair_id"])
    return {"gallery": gallery, "rows": kept, "twin": source / "test" / twin["file_name"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(workdir, model_dir, clips):
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_TEMP_DIR=str(workdir / "gradio"), PYTHONUNBUFFERED="1")
    log = open(workdir / "server.log", "w")
    command = [sys.executable, str(REPO / "demo" / "app.py"), "--model", str(model_dir), "--port", str(port),
               "--gallery_dir", str(clips["gallery"]), "--cache_dir", str(workdir / "cache"),
               "--max_duration_s", str(MAX_DURATION_S)]
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    start = time.monotonic()
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"demo exited with {process.returncode}:\n{(workdir / 'server.log').read_text()[-3000:]}")
            if time.monotonic() - start > STARTUP_TIMEOUT_S:
                pytest.fail(f"demo not up after {STARTUP_TIMEOUT_S}s:\n{(workdir / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


def test_demo_exposes_the_named_endpoints(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/search", "/recognize", "/explain", "/add_video"} <= set(endpoints)


def test_search_returns_playable_videos_with_descending_scores(client, clips):
    query = clips["rows"][0]["caption"]
    videos, table = client.predict(query, 3, api_name="/search")
    assert len(videos) == 3 and len(table["data"]) == 3
    assert table["headers"] == ["rank", "score", "video", "caption", "source"]
    scores = [row[1] for row in table["data"]]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    names = {row["file_name"] for row in clips["rows"]}
    for item, row in zip(videos, table["data"]):
        assert Path(item["video"]).suffix == ".mp4" and Path(item["video"]).stat().st_size > 0
        rank, score = item["caption"].split(" · ")[0].split(". ")
        assert row[2] in names and int(rank) == row[0] and float(score) == pytest.approx(row[1], abs=1e-3)


def test_search_ranks_the_clip_of_an_exact_caption_near_the_top(client, clips, model_dir):
    if model_dir != TRAINED_MODEL:
        pytest.skip(f"retrieval quality needs the trained model at {TRAINED_MODEL} (absent: a random model ran)")
    ranks = []
    for row in clips["rows"]:
        _, table = client.predict(row["caption"], 4, api_name="/search")
        names = [r[2] for r in table["data"]]
        ranks.append(names.index(row["file_name"]) + 1)
    # The default model's test T2V R@1 is 39% over 100 clips (README); over this 4-clip gallery every exact caption
    # must rank its clip in the top 2, mean rank well below chance (2.5). Measured: [1, 1, 1, 2] for the committed
    # two-stage default model (outputs of modeling_stop.retrieval, which the search calls).
    assert max(ranks) <= 2 and sum(ranks) / len(ranks) <= 1.5, ranks


def test_recognize_returns_a_probability_per_label(client, clips):
    labels = ["moving left", "moving right", "growing"]
    result = client.predict(handle_file(clips["gallery"] / clips["rows"][0]["file_name"]), ", ".join(labels),
                            api_name="/recognize")
    confidences = {c["label"]: c["confidence"] for c in result["confidences"]}
    assert set(confidences) == set(labels) and result["label"] == max(confidences, key=confidences.get)
    assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-5)


def test_explain_shows_every_sampled_frame_and_the_temporal_plot(client, clips, model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    from modeling_stop.processing_stop import STOPProcessor

    num_frames = STOPProcessor.from_pretrained(model_dir, trust_remote_code=True).video_processor.num_frames
    frames, plot, summary = client.predict(handle_file(clips["gallery"] / clips["rows"][1]["file_name"]),
                                           api_name="/explain")
    from PIL import Image

    assert len(frames) == min(num_frames, 16)  # the clips have 16 frames
    assert all(Path(f["image"]).is_file() and f["caption"].startswith("frame ") for f in frames)
    assert Image.open(frames[0]["image"]).size[0] >= 256
    assert np.asarray(Image.open(plot)).std() > 0
    if config["variant"] == "official" and config["mask_layout"] == "official":
        assert "lattice" in summary and "weight" in frames[0]["caption"]


def test_an_added_video_joins_that_sessions_gallery(server, clips):
    session = Client(server, verbose=False)  # its own session: the other tests keep the four-clip gallery
    status, _ = session.predict(handle_file(clips["twin"]), api_name="/add_video")
    assert "5 videos" in status
    _, table = session.predict("anything", 5, api_name="/search")
    assert clips["twin"].name in [row[2] for row in table["data"]]


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


def test_overlay_expands_the_mask_with_the_models_layout():
    import torch

    from demo.app import overlay_regions

    frames = np.full((1, 8, 8, 3), 100, np.uint8)
    mask = torch.zeros(1, 2, 2, dtype=torch.bool)
    mask[0, 0, 1] = True  # cell (0, 1) of a 2 x 2 grid, patch 4
    lattice = overlay_regions(frames, mask, patch=4, layout="official")[0]
    patches = overlay_regions(frames, mask, patch=4, layout="patch")[0]
    scale = lattice.shape[0] // 8
    red_lattice = lattice[::scale, ::scale, 0] > 150
    red_patch = patches[::scale, ::scale, 0] > 150
    rows, cols = np.indices((8, 8))
    assert (red_lattice == ((rows % 2 == 0) & (cols % 2 == 1))).all()  # period-2 lattice: h mod 2 = 0, w mod 2 = 1
    assert (red_patch == ((rows < 4) & (cols >= 4))).all()  # the top-right patch


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (CI installs it: apt-get install chromium)")
def test_page_renders_the_three_tabs_in_a_browser(server, workdir):
    from PIL import Image

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--virtual-time-budget=15000", "--window-size=1280,900"]
    shot = workdir / "shot.png"
    subprocess.run([str(CHROMIUM), *flags, f"--user-data-dir={tempfile.mkdtemp(dir=workdir)}", f"--screenshot={shot}",
                    server], check=True, capture_output=True, timeout=90)
    pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert pixels.shape == (900, 1280) and pixels.std() > 10  # not a blank page
    dom = subprocess.run([str(CHROMIUM), *flags, f"--user-data-dir={tempfile.mkdtemp(dir=workdir)}", "--dump-dom",
                          server], check=True, capture_output=True, text=True, timeout=90).stdout
    for tab in ("Search", "Recognize", "What STOP looks at"):
        assert f">{tab}<" in dom, tab
