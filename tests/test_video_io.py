import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modeling_stop import video_io
from modeling_stop.video_io import VideoDecodeError, read_video_frames, resize_shortest_edge, sample_frame_indices
from tests.conftest import REPO_ROOT, SAMPLE_VIDEOS
from tests.video_factory import (
    index_of,
    indexed_frames,
    moving_frames,
    png_bytes,
    write_audio_only,
    write_solid_8k,
    write_video,
)

HAS_TORCHCODEC = "torchcodec" in video_io.available_backends()
BACKENDS = [
    "pyav",
    pytest.param("torchcodec", marks=pytest.mark.skipif(not HAS_TORCHCODEC, reason="torchcodec does not load here")),
]
CENTRES_30_OF_8 = [1, 5, 9, 13, 16, 20, 24, 28]  # floor((i + 0.5) * 30 / 8)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    corner = np.zeros((1, 48, 64, 3), np.uint8)
    corner[:, :10, :10] = 255  # a white square in the top-left corner
    gop_options = {"preset": "veryfast", "crf": "28", "x264-params": "keyint=7:min-keyint=7:bframes=2:scenecut=0"}
    made = {
        "clip30": write_video(root / "clip30.mp4", indexed_frames(30)),
        "short3": write_video(root / "short3.mp4", indexed_frames(3)),
        "single": write_video(root / "single.mp4", indexed_frames(1)),
        "odd_h264": write_video(root / "odd.mp4", indexed_frames(4, 55, 97)),
        "odd_ffv1": write_video(root / "odd.mkv", indexed_frames(4, 55, 97), codec="ffv1", pix_fmt="yuv444p"),
        "rot90": write_video(root / "rot90.mp4", corner, rotation=90),
        "rot270": write_video(root / "rot270.mp4", corner, rotation=-90),
        "vfr": write_video(root / "vfr.mp4", indexed_frames(8), times=[0, 0.1, 0.2, 1.0, 1.1, 1.2, 3.0, 3.1]),
        "gop": write_video(root / "gop.mp4", moving_frames(30), pix_fmt="yuv420p", options=gop_options),
        "audio": write_audio_only(root / "audio.mp4"),
        "empty": root / "empty.mp4",
        "text": root / "notes.mp4",
        "png": root / "picture.mp4",
        "truncated": root / "truncated.mp4",
        "truncated_faststart": root / "truncated_faststart.mp4",
    }
    made["empty"].write_bytes(b"")
    made["text"].write_text("this is a text file, not a video\n")
    made["png"].write_bytes(png_bytes())
    # Cut before the index at the end of the file: the container cannot be opened at all.
    made["truncated"].write_bytes(made["clip30"].read_bytes()[:2000])
    # Index first (as `-movflags +faststart` writes it), frame data cut: opens, then fails decoding.
    faststart_options = {"preset": "ultrafast", "movflags": "+faststart"}
    faststart = write_video(root / "faststart.mp4", moving_frames(30), options=faststart_options)
    with av.open(str(faststart)) as container:
        assert container.format.name.startswith("mov")
    data = faststart.read_bytes()
    made["truncated_faststart"].write_bytes(data[: len(data) // 3])
    return made


def decode_all_pyav(path, keep=None) -> dict[int, np.ndarray]:
    """Ground truth: every frame decoded sequentially (no seeking), in display order; `keep` limits what is kept."""
    with av.open(str(path)) as container:
        return {
            i: frame.to_ndarray(format="rgb24")
            for i, frame in enumerate(container.decode(video=0))
            if keep is None or i in keep
        }


# ---------------------------------------------------------------- sampling


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniform_sampling_takes_segment_centres(videos, backend):
    frames, indices = read_video_frames(videos["clip30"], 8, backend=backend)
    assert indices == CENTRES_30_OF_8
    assert [index_of(f) for f in frames] == CENTRES_30_OF_8
    assert frames.dtype == torch.uint8 and frames.shape == (8, 48, 64, 3)


def test_every_input_kind_gives_the_same_frames(videos):
    path = videos["clip30"]
    reference, indices = read_video_frames(path, 8, backend="pyav")
    inputs = {"str": str(path), "Path": Path(path), "bytes": path.read_bytes()}
    if HAS_TORCHCODEC:
        from torchcodec.decoders import VideoDecoder

        inputs["VideoDecoder"] = VideoDecoder(str(path))
    for kind, video in inputs.items():
        frames, got = read_video_frames(video, 8)
        assert got == indices, kind
        torch.testing.assert_close(frames, reference, atol=0, rtol=0, msg=kind)

    array = indexed_frames(30)
    for kind, video in {"numpy": array, "torch": torch.from_numpy(array)}.items():
        frames, got = read_video_frames(video, 8)
        assert got == CENTRES_30_OF_8, kind
        assert torch.equal(frames, torch.from_numpy(array[CENTRES_30_OF_8])), kind


@pytest.mark.skipif(not HAS_TORCHCODEC, reason="datasets' Video feature decodes with torchcodec")
def test_datasets_video_feature_is_sampled_by_timestamp(videos):
    from datasets import Dataset, Video

    dataset = Dataset.from_dict({"video": [str(videos["vfr"])]}).cast_column("video", Video())
    frames, indices = read_video_frames(dataset[0]["video"], 4)
    assert indices == [2, 5, 5, 5]
    assert [index_of(f) for f in frames] == indices


def test_random_sampling_is_seeded_and_stays_in_each_segment(videos):
    def draw(seed):
        return read_video_frames(videos["clip30"], 8, sampling="random", generator=torch.Generator().manual_seed(seed))

    (frames_a, a), (frames_b, b), (_, c) = draw(0), draw(0), draw(1)
    assert a == b and torch.equal(frames_a, frames_b)
    assert a != CENTRES_30_OF_8 and a != c
    for i, index in enumerate(a):
        assert i * 30 // 8 <= index < (i + 1) * 30 // 8 + 1, (i, index)
    assert [index_of(f) for f in frames_a] == a


def test_sample_frame_indices_on_a_constant_frame_rate_matches_index_arithmetic():
    for n, k in [(30, 8), (8, 4), (100, 12), (13, 12), (12, 12)]:
        times = np.arange(n) / 29.97
        assert sample_frame_indices(times, n / 29.97, k) == [int((i + 0.5) * n / k) for i in range(min(n, k))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_variable_frame_rate_is_sampled_by_time(videos, backend):
    # Frames at 0, .1, .2, 1.0, 1.1, 1.2, 3.0, 3.1 s: centres of 4 segments of 0.8 s are 0.4, 1.2, 2.0 and
    # 2.8 s, shown by frames 2, 5, 5, 5 (index arithmetic would give 1, 3, 5, 7).
    frames, indices = read_video_frames(videos["vfr"], 4, backend=backend)
    assert indices == [2, 5, 5, 5]
    assert [index_of(f) for f in frames] == indices


def test_target_fps_resamples_the_time_line(videos):
    # 3 s at 10 fps resampled at 2 fps: candidates are frames 0, 5, 10, 15, 20, 25.
    assert read_video_frames(videos["clip30"], 8, target_fps=2)[1] == [0, 5, 10, 15, 20, 25]
    assert read_video_frames(videos["clip30"], 4, target_fps=2)[1] == [0, 10, 15, 25]
    with pytest.raises(ValueError, match="<array>"):
        read_video_frames(indexed_frames(5), 4, target_fps=2)


def test_max_frames_samples_only_the_beginning(videos):
    assert read_video_frames(videos["clip30"], 4, max_frames=10)[1] == [1, 3, 6, 8]
    assert read_video_frames(videos["clip30"], 8, max_frames=5)[1] == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- odd videos


@pytest.mark.parametrize("backend", BACKENDS)
def test_video_shorter_than_num_frames_returns_all_its_frames(videos, backend):
    frames, indices = read_video_frames(videos["short3"], 8, backend=backend)
    assert indices == [0, 1, 2] and frames.shape == (3, 48, 64, 3)
    frames, indices = read_video_frames(videos["single"], 8, backend=backend)
    assert indices == [0] and frames.shape == (1, 48, 64, 3)
    assert abs(frames.float().mean().item() - indexed_frames(1)[0].mean()) < 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("video", ["odd_h264", "odd_ffv1"])
def test_odd_frame_sizes_decode(videos, backend, video):
    frames, indices = read_video_frames(videos[video], 8, backend=backend)
    assert frames.shape == (4, 55, 97, 3)
    assert [index_of(f) for f in frames] == indices == [0, 1, 2, 3]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("video, quarter_turns", [("rot90", 1), ("rot270", 3)])
def test_rotation_metadata_is_applied_as_a_player_shows_it(videos, backend, video, quarter_turns):
    stored = decode_all_pyav(videos[video])[0]  # as encoded: 48x64, white square top-left
    frames, _ = read_video_frames(videos[video], 1, backend=backend)
    assert frames.shape == (1, 64, 48, 3)
    expected = torch.from_numpy(np.rot90(stored, quarter_turns).copy())  # counter-clockwise, as FFmpeg's CLI shows it
    assert torch.equal(frames[0], expected)
    white = frames[0, :, :, 0] > 128
    corner = (slice(54, 64), slice(0, 10)) if quarter_turns == 1 else (slice(0, 10), slice(38, 48))
    assert white[corner].all() and white.sum() == 100


# ---------------------------------------------------------------- backends


@pytest.mark.skipif(not HAS_TORCHCODEC, reason="torchcodec does not load here")
def test_both_backends_seek_to_the_same_frames_as_a_sequential_decode(videos):
    # Keyframes every 7 frames, B-frames: seeking, decoding on and reordering are all exercised.
    truth = decode_all_pyav(videos["gop"])
    for seed in range(3):
        picks = {}
        for backend in ("pyav", "torchcodec"):
            generator = torch.Generator().manual_seed(seed)
            frames, indices = read_video_frames(
                videos["gop"], 8, sampling="random", generator=generator, backend=backend
            )
            for frame, index in zip(frames, indices):
                assert torch.equal(frame, torch.from_numpy(truth[index])), (backend, index)
            picks[backend] = indices
        assert picks["pyav"] == picks["torchcodec"]


def test_backend_is_chosen_by_argument_then_environment(videos, monkeypatch):
    calls = []
    for name in ("_decode_pyav", "_decode_torchcodec"):
        original = getattr(video_io, name)
        monkeypatch.setattr(video_io, name, lambda *a, _n=name, _f=original: calls.append(_n) or _f(*a))
    monkeypatch.setenv(video_io.BACKEND_ENV_VAR, "pyav")
    read_video_frames(videos["short3"], 2)
    assert calls == ["_decode_pyav"]
    if HAS_TORCHCODEC:
        read_video_frames(videos["short3"], 2, backend="torchcodec")
        assert calls[-1] == "_decode_torchcodec"
    monkeypatch.setenv(video_io.BACKEND_ENV_VAR, "ffmpeg-cli")
    with pytest.raises(ValueError, match="STOP_VIDEO_BACKEND"):
        read_video_frames(videos["short3"], 2)


def test_pyav_is_used_when_torchcodec_cannot_load(videos, monkeypatch):
    monkeypatch.delenv(video_io.BACKEND_ENV_VAR, raising=False)
    monkeypatch.setattr(video_io, "_load_torchcodec", lambda: (None, "OSError: libavutil.so.59: cannot open"))
    assert video_io.available_backends() == ["pyav"]
    frames, indices = read_video_frames(videos["clip30"], 8)
    assert indices == CENTRES_30_OF_8
    with pytest.raises(ImportError, match="libavutil.*pyav"):
        read_video_frames(videos["clip30"], 8, backend="torchcodec")


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "video, problem",
    [
        ("missing", "no such file"),
        ("empty", "empty"),
        ("text", "cannot open"),
        ("png", "still image"),
        ("audio", "no video stream"),
        ("truncated", "truncated"),
        ("truncated_faststart", "truncated"),
    ],
)
def test_unreadable_videos_raise_an_error_naming_the_file(videos, tmp_path, backend, video, problem):
    path = videos.get(video, tmp_path / "missing.mp4")
    with pytest.raises(VideoDecodeError, match=problem) as error:
        read_video_frames(path, 8, backend=backend)
    assert str(path) in str(error.value)


def test_unreadable_bytes_and_arrays_name_their_kind():
    with pytest.raises(VideoDecodeError, match="<bytes>.*empty"):
        read_video_frames(b"", 4)
    with pytest.raises(VideoDecodeError, match="<bytes>.*still image"):
        read_video_frames(png_bytes(), 4)
    with pytest.raises(VideoDecodeError, match=r"<array>.*\[T, H, W, 3\].*float32"):
        read_video_frames(np.zeros((4, 48, 64, 3), np.float32), 4)
    with pytest.raises(VideoDecodeError, match=r"<array>.*\[4, 3, 48, 64\]"):
        read_video_frames(torch.zeros(4, 3, 48, 64, dtype=torch.uint8), 4)


# ---------------------------------------------------------------- resizing and memory


def test_resize_shortest_edge_equals_one_shot_bicubic_interpolation():
    generator = torch.Generator().manual_seed(0)
    for shape, size in [((2, 700, 500, 3), 64), ((1, 48, 64, 3), 224), ((1, 55, 97, 3), 32)]:
        frames = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        resized = resize_shortest_edge(frames, size)
        short, long = min(shape[1:3]), max(shape[1:3])
        assert min(resized.shape[1:3]) == size and max(resized.shape[1:3]) == int(size * long / short)
        reference = F.interpolate(
            frames.permute(0, 3, 1, 2).float(), size=resized.shape[1:3], mode="bicubic", antialias=True
        )
        assert torch.equal(resized, reference.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_resize_to_shrinks_each_decoded_frame(videos, backend):
    full, indices = read_video_frames(videos["gop"], 8, backend=backend)
    small, same = read_video_frames(videos["gop"], 8, resize_to=24, backend=backend)
    assert same == indices and small.shape == (8, 24, 32, 3)
    assert torch.equal(small, resize_shortest_edge(full, 24))


class PeakRSS:
    """Peak growth of this process's resident memory while the block runs (polled from /proc)."""

    def __enter__(self):
        self.baseline = self.peak = self._rss()
        self._running = True
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.growth = max(self.peak, self._rss()) - self.baseline

    def _poll(self):
        while self._running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    @staticmethod
    def _rss():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


MEASURE_8K = """
import json, sys
from modeling_stop.video_io import read_video_frames
from tests.test_video_io import PeakRSS
from tests.video_factory import index_of
path, backends = sys.argv[1], sys.argv[2:]
result = {}
for backend in backends:
    for n in (1, 2):
        with PeakRSS() as memory:
            frames, indices = read_video_frames(path, n, resize_to=32, backend=backend)
        result[f"{backend}/{n}"] = [memory.growth, list(frames.shape), indices, [index_of(f) for f in frames]]
print(json.dumps(result))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc to measure memory")
def test_8k_frames_are_shrunk_one_at_a_time(tmp_path):
    video = write_solid_8k(tmp_path / "8k.mp4", num_frames=2)
    frame_bytes = 7680 * 4320 * 3
    # A fresh process whose allocator hands big blocks straight back to the system, so that resident
    # memory is live memory (glibc's default heap reuse makes the peak depend on earlier tests).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    command = [sys.executable, "-c", MEASURE_8K, str(video), *video_io.available_backends()]
    run = subprocess.run(command, env=env, cwd=REPO_ROOT, check=True, capture_output=True, text=True)
    result = json.loads(run.stdout)
    for backend in video_io.available_backends():
        one, two = result[f"{backend}/1"], result[f"{backend}/2"]
        assert two[1:] == [[2, 32, 56, 3], [0, 1], [0, 1]] and one[1:] == [[1, 32, 56, 3], [1], [1]]
        # Decoding a second 8K frame must not raise the peak: frames are shrunk one at a time. Keeping it
        # at full size would add a whole frame (and the decoder's working set is ~2.6 frames here).
        extra = (two[0] - one[0]) / frame_bytes
        assert extra < 0.5, f"{backend}: the second 8K frame added {extra:.2f} frames of memory"
        assert two[0] < 4 * frame_bytes, f"{backend}: peak memory grew by {two[0] / frame_bytes:.2f} 8K frames"


# ---------------------------------------------------------------- real videos


SAMPLES = ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4"]


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_videos_decode_identically_with_both_backends(name):
    path = SAMPLE_VIDEOS / name
    if not path.exists():
        pytest.skip(f"{path} not found: run `python -m training.fetch_samples --output_dir {SAMPLE_VIDEOS}`")
    results = {backend: read_video_frames(path, 12, backend=backend) for backend in video_io.available_backends()}
    frames, indices = results["pyav"]
    with av.open(str(path)) as container:
        total = container.streams.video[0].frames
        width, height = container.streams.video[0].width, container.streams.video[0].height
    assert indices == [int((i + 0.5) * total / 12) for i in range(12)]
    assert frames.shape == (12, height, width, 3)
    truth = decode_all_pyav(path, keep=set(indices))
    assert all(torch.equal(frame, torch.from_numpy(truth[i])) for frame, i in zip(frames, indices))
    for backend, (other_frames, other_indices) in results.items():
        assert other_indices == indices, backend
        assert torch.equal(other_frames, frames), backend
