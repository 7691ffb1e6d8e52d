"""The demo's parts in-process, on a tiny random STOP model: caches, video checks, validation, per-layer drawing,
start-up without a gallery, and what the folder needs to run alone (requirements, no repository imports, a fast
`--help`, a gallery that its command reproduces)."""

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from demo.app import build_demo, render_explanation
from demo.backend import DemoBackend, DemoInputError, VideoAnalysis, collect_diagnostics
from demo.drawing import overlay_regions
from demo.gallery import BoundedCache, VideoCheckError, VideoLimits, check_video, find_gallery, scan_videos
from modeling_stop.video_io import read_video_frames
from training.synthetic import write_benchmark, write_video

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"
MODEL_GALLERY = REPO / "checkpoints" / "stop-synthetic" / "gallery"
REPOSITORY_PACKAGES = {"modeling_stop", "training", "benchmarks", "demo", "tests"}
# Import name -> distribution name, for the third-party modules the demo (or the model's own code) imports.
DISTRIBUTIONS = {
    "av": "av",
    "torch": "torch",
    "numpy": "numpy",
    "matplotlib": "matplotlib",
    "gradio": "gradio",
    "transformers": "transformers",
    "huggingface_hub": "huggingface-hub",
}


@pytest.fixture(scope="module")
def tiny():
    """A random official-variant STOP model (32 px frames, 4 x 4 grid) and its processor, byte-level tokenizer."""
    from transformers import CLIPTokenizer

    from modeling_stop.processing_stop import STOPProcessor, STOPVideoProcessor
    from tests.tiny import tiny_stop
    from training.tokenizer import bytes_to_unicode

    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    model = tiny_stop(clip_kwargs=dict(image_size=32, patch_size=8, vocab=len(vocab)), num_frames=4, max_words=16)
    return model, STOPProcessor(STOPVideoProcessor(num_frames=4, size=32), tokenizer, max_words=16)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    write_benchmark(folder, num_train=0, num_validation=0, num_test=4, num_frames=8, size=32)
    return folder / "test"


@pytest.fixture()
def backend(tiny, clips, tmp_path):
    return DemoBackend(*tiny, scan_videos(clips), cache_dir=tmp_path / "cache", max_uploads=2)


# ------------------------------------------------------------------------------------------------ caches


def test_bounded_cache_keeps_the_most_recent_entries_and_drops_expired_ones():
    now = [0.0]
    cache = BoundedCache(max_entries=2, max_age_s=10, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2
    now[0] = 10.5
    cache.put("d", 4)
    assert "a" not in cache and "c" not in cache and cache.get("d") == 4 and len(cache) == 1
    with pytest.raises(ValueError, match="max_entries >= 1"):
        BoundedCache(0, 10)


def test_an_analysis_is_computed_once_per_video_content(backend, clips, tmp_path):
    assert backend.forward_passes == 4  # the gallery, at start-up; its analyses are kept too
    backend.explain(str(clips / "00000a.mp4"))
    assert backend.forward_passes == 4
    video = tmp_path / "upload.mp4"
    write_video(video, np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8))
    copy = tmp_path / "same-bytes-other-name.mp4"
    copy.write_bytes(video.read_bytes())
    first, _ = backend.explain(str(video))
    second, _ = backend.explain(str(copy))
    backend.recognize(str(copy), "a, b")
    assert backend.forward_passes == 5 and second is first


def test_uploads_live_per_session_and_never_rewrite_the_gallery_cache(backend, clips, tmp_path):
    [cache_file] = (tmp_path / "cache" / "embeddings").glob("*.pt")
    written = cache_file.read_bytes()
    write_benchmark(tmp_path / "up", seed=3, num_train=0, num_validation=0, num_test=6, num_frames=8, size=32)
    uploads = sorted((tmp_path / "up" / "test").glob("*.mp4"))
    for path in uploads[:3]:
        status = backend.add_video(str(path), "session-1")
    assert "oldest upload, 00000a.mp4, was removed (at most 2 per session)" in status
    assert [u.video.path for u in backend.session_uploads("session-1")] == [str(p) for p in uploads[1:3]]
    assert backend.gallery_size("session-1") == 6 and backend.gallery_size("session-2") == 4
    again = backend.add_video(str(uploads[2]), "session-1")
    assert again == f"**{uploads[2].name}** is already in your gallery; it was not added again."
    gallery_clip = backend.add_video(str(clips / "00001a.mp4"), "session-2")
    assert gallery_clip == "**00001a.mp4** is already in the gallery; it was not added again."
    assert cache_file.read_bytes() == written


def test_the_number_of_results_is_validated_and_capped(backend):
    for bad in (0, -1, 1.5, "x", None, float("nan")):
        with pytest.raises(DemoInputError, match="The number of results must be a whole number of at least 1"):
            backend.search("a red circle", bad, "s")
    assert len(backend.search("a red circle", 100, "s")) == 4


# ------------------------------------------------------------------------------------------------ video checks


def test_frame_count_frame_rate_and_frame_size_are_checked_before_decoding(tmp_path):
    video = tmp_path / "clip.mp4"
    write_video(video, np.zeros((30, 16, 16, 3), np.uint8), fps=240)
    info = check_video(video, VideoLimits(max_fps=300))
    assert info["frames"] == 30 and info["fps"] == pytest.approx(240) and (info["width"], info["height"]) == (16, 16)
    with pytest.raises(VideoCheckError, match="clip.mp4 has 240 frames per second; this demo takes up to 60 fps"):
        check_video(video, VideoLimits())
    with pytest.raises(VideoCheckError, match="clip.mp4 has 30 frames; this demo takes videos of up to 20 frames"):
        check_video(video, VideoLimits(max_fps=300, max_frames=20))
    with pytest.raises(VideoCheckError, match="clip.mp4 has 16x16 frames; this demo takes up to 0.0 megapixels"):
        check_video(video, VideoLimits(max_fps=300, max_pixels=255))


# ------------------------------------------------------------------------------------------------ drawing


def _per_layer_outputs(num_layers=3, frames=4, grid=4):
    """Outputs shaped as a model that reports its regions per layer: `[B, L, T, g, g]`, plus counts per layer as a
    tuple of `[B, T - 1]` tensors and the combined counts `[B, T - 1]`."""
    mask = torch.zeros(1, num_layers, frames, grid, grid, dtype=torch.bool)
    for layer in range(num_layers):
        mask[0, layer, :, layer, layer] = True  # layer l selects cell (l, l) in every frame
    per_layer = tuple(torch.full((1, frames - 1), layer + 1) for layer in range(num_layers))
    return {
        "video_embeds": torch.zeros(1, 8),
        "spatial_mask": mask,
        "inserted_tokens": sum(per_layer),
        "inserted_tokens_per_layer": per_layer,
        "frame_weights": torch.linspace(0, 1, frames)[None],
    }


def test_per_layer_regions_and_counts_are_drawn_at_the_chosen_layer():
    diagnostics = collect_diagnostics(_per_layer_outputs(), num_frames=4, num_valid=4)
    shapes = {d.name: (d.kind, d.per, tuple(d.values.shape), d.layered) for d in diagnostics}
    assert shapes == {
        "spatial_mask": ("regions", "frame", (3, 4, 4, 4), True),
        "inserted_tokens": ("counts", "gap", (1, 3), False),
        "inserted_tokens_per_layer": ("counts", "gap", (3, 3), True),
        "frame_weights": ("values", "frame", (1, 4), False),
    }
    frames = np.full((4, 32, 32, 3), 100, np.uint8)
    analysis = VideoAnalysis(torch.zeros(8), frames, [0, 2, 4, 6], diagnostics, layout="patch")
    images, plot, summary, num_layers = render_explanation(analysis, layer=2)
    assert num_layers == 3 and len(images) == 4 and plot.std() > 0
    scale = images[0][0].shape[0] // 32
    red = images[0][0][::scale, ::scale, 0] > 150
    rows, cols = np.indices((32, 32))
    assert (red == ((rows // 8 == 1) & (cols // 8 == 1))).all()  # layer 2 selected cell (1, 1)
    assert "`spatial_mask` at layer 2 of 3: frame 1 keeps the patches (row, column) (1, 1)" in summary
    assert "`inserted_tokens_per_layer` at layer 2 of 3 per gap: [2, 2, 2] (total 6)" in summary
    assert "`inserted_tokens` per gap: [6, 6, 6] (total 18)" in summary
    assert "2 inserted tokens per layer after it" in images[0][1] and "frame weights 0.00" in images[0][1]


def test_overlay_expands_the_mask_with_the_models_layout():
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


def test_the_real_model_output_is_drawn(backend, clips):
    analysis, layer = backend.explain(str(clips / "00000a.mp4"), 5)
    names = {d.name for d in analysis.diagnostics}
    assert {"spatial_mask", "frame_weights"} <= names and analysis.layout == "official" and layer == 1
    images, _, summary, _ = render_explanation(analysis, layer)
    assert len(images) == 4 and "lattice of dots" in summary and "frame weights" in images[0][1]


# ------------------------------------------------------------------------------------------------ start-up


def test_without_gallery_clips_the_demo_starts_for_uploads(tiny, tmp_path):
    model_folder = tmp_path / "model"
    model_folder.mkdir()
    assert find_gallery(str(model_folder)) is None
    (model_folder / "examples").mkdir()
    assert find_gallery(str(model_folder)) == model_folder / "examples"
    backend = DemoBackend(*tiny, [])
    backend.gallery_folder = None
    demo = build_demo(backend=backend)
    texts = [block.value for block in demo.blocks.values() if type(block).__name__ == "Markdown"]
    assert any("**No gallery clips** came with this model" in text for text in texts)
    with pytest.raises(DemoInputError, match="The gallery is empty: add a video first"):
        backend.search("a red circle", 4, "s")
    assert demo.delete_cache == (600, 3600)


def test_help_parses_arguments_before_any_heavy_import():
    probe = (
        "import runpy, sys\nsys.argv = ['app.py', '--help']\ntry:\n"
        "    runpy.run_path('demo/app.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'gradio', 'transformers', 'numpy') if m in sys.modules))"
    )
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert "STOP_DEMO_MODEL" in result.stdout and result.stdout.strip().endswith("[]"), result.stdout
    assert elapsed < 5, elapsed


# ------------------------------------------------------------------------------------------------ standalone


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_demo_imports_nothing_of_the_repository_and_never_compares_variants():
    own = {p.stem for p in DEMO.glob("*.py")}
    for path in DEMO.glob("*.py"):
        assert not (_imports(path) & REPOSITORY_PACKAGES), path
        assert not re.search(r"variant\s*[!=]=", path.read_text()), path
        assert _imports(path) - own - set(sys.stdlib_module_names) <= set(DISTRIBUTIONS), path


def test_requirements_list_every_import_with_pins_that_agree_with_pyproject():
    requirements = {}
    for line in (DEMO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            requirements[canonicalize_name(requirement.name)] = requirement
    model_code = (REPO / "checkpoints" / "stop-synthetic").glob("*.py")  # what trust_remote_code runs
    imported = set().union(*(_imports(p) for p in [*DEMO.glob("*.py"), *model_code])) - set(sys.stdlib_module_names)
    imported -= {p.stem for p in DEMO.glob("*.py")} | {"torchcodec"}  # torchcodec: optional, PyAV stands in
    assert imported <= set(DISTRIBUTIONS), imported - set(DISTRIBUTIONS)
    needed = {DISTRIBUTIONS[name] for name in imported} - {"gradio"}  # gradio comes from the Space's sdk_version
    assert needed <= set(requirements), needed - set(requirements)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {canonicalize_name(Requirement(r).name): Requirement(r) for r in project["dependencies"]}
    for name, requirement in requirements.items():
        installed = importlib.metadata.version(name)
        assert requirement.specifier.contains(installed, prereleases=True), (name, installed, requirement)
        assert name in declared and declared[name].specifier.contains(installed, prereleases=True), name
    sdk = re.search(r"^sdk_version: (\S+)$", (DEMO / "README.md").read_text(), re.M).group(1)
    demo_extra = [Requirement(r) for r in project["optional-dependencies"]["demo"]]
    assert all(r.specifier.contains(sdk) for r in demo_extra if r.name == "gradio"), sdk


def test_the_model_folders_gallery_is_what_its_command_writes(tmp_path):
    rows = [json.loads(line) for line in (MODEL_GALLERY / "test" / "metadata.jsonl").read_text().splitlines()]
    write_benchmark(tmp_path, num_train=0, num_validation=0, num_test=len(rows))
    committed = sorted(p.relative_to(MODEL_GALLERY) for p in MODEL_GALLERY.rglob("*") if p.is_file())
    assert committed == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    # Byte-identical on the CPU that wrote them. On another CPU numpy's float rendering can differ in the last bit
    # (other SIMD paths; on an AVX2-only CPU one of the 12 clips differs from frame 4 on, in 5% of its decoded
    # pixels), and the encoder carries that on: such a clip must still decode to nearly the same frames, and most
    # clips must match exactly.
    differing = []
    for name in committed:
        if (MODEL_GALLERY / name).read_bytes() != (tmp_path / name).read_bytes():
            assert name.suffix == ".mp4", name
            ours, theirs = (_decoded_frames(folder / name).astype(np.int16) for folder in (MODEL_GALLERY, tmp_path))
            assert ours.shape == theirs.shape, name
            assert np.abs(ours - theirs).mean() < 0.5 and (ours != theirs).mean() < 0.1, name
            differing.append(name)
    assert len(differing) <= len(rows) // 4, differing
    assert sum((MODEL_GALLERY / name).stat().st_size for name in committed) < 300_000


def _decoded_frames(path):
    frames, _ = read_video_frames(path, num_frames=10_000)  # fewer frames than asked: all of them
    return np.asarray(frames)


def test_the_label_template_is_the_models_own():
    from types import SimpleNamespace

    from demo.backend import format_label, hypothesis_template

    classifier = SimpleNamespace(config=SimpleNamespace(label_template="a photo of {label}"))
    plain = SimpleNamespace(config=SimpleNamespace(custom_pipelines=None))
    assert format_label(hypothesis_template(classifier, "folder"), "cat") == "a photo of cat"
    assert format_label(hypothesis_template(plain, "folder"), "cat") == "a video of cat"
