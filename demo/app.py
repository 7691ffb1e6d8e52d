"""Gradio demo of STOP: text-to-video search, zero-shot recognition, and what the prompts look at.

    python demo/app.py [--model PATH_OR_HUB_ID] [--port N] [--max_upload_mb MB] [--max_duration_s S]
                       [--gallery_dir DIR] [--cache_dir DIR]

Runs on a CPU, offline, with the model trained by this repository (`checkpoints/stop-synthetic/`) unless
`--model` (or the `STOP_DEMO_MODEL` environment variable, e.g. a Space variable) names another folder or Hub id.
The gallery is a dozen held-out clips of the synthetic benchmark (rendered into the cache on first start), the
real sample videos of `python -m training.fetch_samples` when they are there, and the videos a visitor adds
(kept for their session only). Gallery embeddings are computed once and cached on disk per model and video hash.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import re
import sys
import time
from functools import wraps
from pathlib import Path

# On a busy shared CPU, OpenMP threads that spin while waiting make a 2 ms text query take 0.7 s.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
# In the repository the demo sits beside the packages; in a Space they are copied next to app.py.
ROOT = HERE.parent if (HERE.parent / "modeling_stop").is_dir() else HERE
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from modeling_stop import STOPModel  # noqa: E402
from modeling_stop.modeling_stop import grid_to_pixels  # noqa: E402
from modeling_stop.pipelines import DEFAULT_HYPOTHESIS_TEMPLATE  # noqa: E402
from modeling_stop.processing_stop import STOPProcessor  # noqa: E402
from modeling_stop.retrieval import embed_texts, rank  # noqa: E402
from modeling_stop.video_io import VideoDecodeError  # noqa: E402
from training.synthetic import CLASS_NAMES  # noqa: E402

if __package__:
    from .gallery import (
        EmbeddingCache, GalleryVideo, VideoCheckError, check_video, ensure_synthetic_clips, file_sha256, scan_videos
    )
else:  # python demo/app.py, or app.py at the root of a Space
    from gallery import (
        EmbeddingCache, GalleryVideo, VideoCheckError, check_video, ensure_synthetic_clips, file_sha256, scan_videos
    )

logger = logging.getLogger("stop-demo")

DEFAULT_MODEL = os.environ.get("STOP_DEMO_MODEL", str(ROOT / "checkpoints" / "stop-synthetic"))
DEFAULT_CACHE = ROOT / ".cache" / "demo"
SAMPLE_VIDEOS = ROOT / ".cache" / "sample_videos"
MAX_LABELS = 50
DISPLAY_SIZE = 256  # frames are enlarged (nearest neighbour, so the prompt regions stay sharp) to at least this
REGION_COLOUR = np.array([255, 40, 40], dtype=np.float32)
OUTLINE_COLOUR = np.array([255, 220, 0], dtype=np.uint8)
TAB_NAMES = ("Search", "Recognize", "What STOP looks at")


# ----------------------------------------------------------------------------------------------------------------
# Model and gallery
# ----------------------------------------------------------------------------------------------------------------


def load_model(model_path: str):
    """A STOP model and its processor from a folder or Hub id (a classification folder gives its STOPModel)."""
    local = Path(model_path)
    looks_local = local.exists() or local.is_absolute() or model_path.startswith(".") or model_path == DEFAULT_MODEL
    if looks_local and not (local / "config.json").is_file():
        raise SystemExit(
            f"No STOP model at {model_path}. Train one (training/train.py writes checkpoints/stop-synthetic) "
            "or pass --model PATH_OR_HUB_ID."
        )
    model = STOPModel.from_pretrained(model_path).eval()
    processor = STOPProcessor.from_pretrained(model_path, trust_remote_code=True)
    return model, processor


class DemoBackend:
    """What the three tabs compute, independent of the UI (so each endpoint is a plain method)."""

    def __init__(self, model, processor, videos: list[GalleryVideo], cache_dir, max_upload_mb, max_duration_s):
        self.model, self.processor = model, processor
        self.max_upload_mb, self.max_duration_s = max_upload_mb, max_duration_s
        self.cache = EmbeddingCache(model, processor, cache_dir)
        self.videos = videos
        self.embeds = self.cache.embed(videos)

    # -------------------------------------------------------------------------------------------- helpers
    def checked_video(self, path) -> GalleryVideo:
        if not path:
            raise gr.Error("Upload a video first (or pick one from the gallery).", print_exception=False)
        check_video(path, self.max_upload_mb, self.max_duration_s)
        name = Path(path).name
        return GalleryVideo(path=str(path), name=name, caption=None, source="upload", sha256=file_sha256(path))

    def video_embedding(self, video: GalleryVideo) -> torch.Tensor:
        return self.cache.embed([video])[0]

    # -------------------------------------------------------------------------------------------- Search
    def add_video(self, path, uploads: list[GalleryVideo]):
        video = self.checked_video(path)
        self.cache.embed([video])  # decodes the video now: a broken file fails here, not during a search
        if all(u.sha256 != video.sha256 for u in uploads) and all(v.sha256 != video.sha256 for v in self.videos):
            uploads = uploads + [video]
        status = f"Added **{html.escape(video.name)}**: the gallery now holds {len(self.videos) + len(uploads)} videos."
        return uploads, status, gr.update(choices=self.video_choices(uploads))

    def search(self, query: str, top_k: float, uploads: list[GalleryVideo]):
        query = (query or "").strip()
        if not query:
            raise gr.Error("Type a description to search for, e.g. “a red circle moving left”.", print_exception=False)
        videos = self.videos + list(uploads)
        embeds = torch.cat([self.embeds, self.cache.embed(list(uploads))]) if uploads else self.embeds
        if not videos:
            raise gr.Error("The gallery is empty: add a video first.", print_exception=False)
        scores, indices = rank(embed_texts(self.model, self.processor, [query]), embeds, top_k=int(top_k))
        results, rows = [], []
        for position, (score, index) in enumerate(zip(scores[0].tolist(), indices[0].tolist()), start=1):
            video = videos[index]
            title = video.caption or video.name
            results.append((video.path, f"{position}. {score:.3f} · {title}"))
            rows.append([position, round(score, 4), video.name, video.caption or "", video.source])
        return results, rows

    # -------------------------------------------------------------------------------------------- Recognize
    def recognize(self, path, labels_text: str) -> dict[str, float]:
        labels = list(dict.fromkeys(label.strip() for label in (labels_text or "").split(",") if label.strip()))
        if len(labels) < 2:
            raise gr.Error("Give at least two candidate labels, separated by commas.", print_exception=False)
        if len(labels) > MAX_LABELS:
            raise gr.Error(f"Give at most {MAX_LABELS} labels (got {len(labels)}).", print_exception=False)
        video = self.video_embedding(self.checked_video(path))
        texts = embed_texts(self.model, self.processor, [DEFAULT_HYPOTHESIS_TEMPLATE.format(label) for label in labels])
        logits = self.model.clip.logit_scale.exp().float() * (texts @ video)
        return dict(zip(labels, logits.softmax(-1).tolist()))

    # -------------------------------------------------------------------------------------------- What STOP looks at
    def explain(self, path):
        self.checked_video(path)
        inputs = self.processor(videos=[path], return_frame_indices=True)
        with torch.inference_mode():
            encoding = self.model.encode_video(inputs["pixel_values"], inputs["video_mask"])
        valid = inputs["video_mask"][0].bool()
        pixels = inputs["pixel_values"][0][valid]
        source_frames = inputs["frame_indices"][0][valid].tolist()
        mask = None if encoding.spatial_mask is None else encoding.spatial_mask[0][valid]
        weights = None if encoding.frame_weights is None else encoding.frame_weights[0][valid].float()
        inserted = None if encoding.inserted_tokens is None else encoding.inserted_tokens[0].tolist()

        frames = overlay_regions(self.to_uint8(pixels), mask, self.config.patch_size, self.region_layout)
        captions = []
        for t, source in enumerate(source_frames):
            caption = f"frame {t + 1} (source frame {source})"
            if weights is not None:
                caption += f" · weight {weights[t]:.2f}"
            if inserted is not None and t < len(inserted) and t + 1 < len(source_frames):
                caption += f" · {inserted[t]} token(s) inserted after it"
            captions.append(caption)
        plot = temporal_plot(weights, inserted, encoding.frame_variation, len(source_frames))
        return list(zip(frames, captions)), plot, self.explain_summary(mask, weights, inserted)

    @property
    def config(self):
        return self.model.config

    @property
    def region_layout(self) -> str:
        return self.config.mask_layout if self.config.variant == "official" else "patch"

    def to_uint8(self, pixel_values: torch.Tensor) -> np.ndarray:
        vp = self.processor.video_processor
        mean, std = torch.tensor(vp.mean).view(1, 3, 1, 1), torch.tensor(vp.std).view(1, 3, 1, 1)
        frames = ((pixel_values * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
        return frames.permute(0, 2, 3, 1).numpy()

    def explain_summary(self, mask, weights, inserted) -> str:
        lines = []
        if mask is not None:
            cells = [(int(i), int(j)) for i, j in mask[0].nonzero().tolist()]
            g = self.config.grid_size
            where = ", ".join(f"({i}, {j})" for i, j in cells)
            if self.region_layout == "official":
                lines.append(
                    f"Frame 1 keeps the cells {where} of the {g}x{g} grid: every pixel (row, column) with "
                    f"row mod {g} = i and column mod {g} = j, i.e. a lattice of dots spread over the whole frame."
                )
            else:
                lines.append(f"Frame 1 keeps the patches (row, column) {where} of the {g}x{g} patch grid.")
        if weights is not None:
            top = int(weights.argmax()) + 1
            lines.append(f"Frame weights (min-max normalised over this video): highest on frame {top}.")
        if inserted is not None:
            lines.append(f"Inserted prompt tokens per gap: {inserted} (total {sum(inserted)}).")
        return "\n\n".join(lines) or "This model has no spatial or temporal STOP prompts (the frozen-CLIP baseline)."

    # -------------------------------------------------------------------------------------------- UI helpers
    def video_choices(self, uploads=()) -> list[tuple[str, str]]:
        """Dropdown entries `(name · caption, id)`; the id is a prefix of the video's hash, never a server path."""
        return [(f"{v.name} · {v.caption}" if v.caption else v.name, v.sha256[:16]) for v in [*self.videos, *uploads]]

    def video_path(self, video_id: str | None, uploads=()) -> str | None:
        return next((v.path for v in [*self.videos, *uploads] if v.sha256[:16] == video_id), None)

    def description(self) -> str:
        c = self.config
        variant = {"official": "the authors' released code", "paper": "the paper's token-space formulation"}[c.variant]
        return (
            f"**Model:** `{c._name_or_path}` · variant `{c.variant}` ({variant}) · "
            f"{self.processor.video_processor.num_frames} frames of {c.image_size} px · "
            f"**gallery:** {len(self.videos)} videos"
        )

    def layout_note(self) -> str:
        c = self.config
        g, k = c.grid_size, c.spatial_top_k
        if not c.use_spatial_prompt:
            regions = "This model has no spatial prompt, so no regions are highlighted."
        elif c.variant == "paper":
            regions = (
                f"**Regions are ViT patches.** In the paper variant each frame keeps its top {k} of {g}x{g} patches, "
                f"scored by the frozen CLIP's CLS-to-patch attention mixed (alpha = {c.attention_alpha}) with a learned "
                "temporal-dynamics score; the spatial prompt is added to those patch tokens."
            )
        elif c.mask_layout == "official":
            regions = (
                f"**With the authors' mask layout the regions are not patches.** The released code pools its region "
                f"score so that cell (i, j) of the {g}x{g} grid is every pixel whose row is i and column is j modulo "
                f"{g}: a period-{g} lattice of dots over the whole frame. The top {k} cells are picked by a convolution "
                "that never receives a gradient (the top-k is a hard comparison), so it keeps its random initial "
                "weights. Red dots below are exactly the pixels where the pixel-space prompt is doubled."
            )
        else:
            regions = (
                f"**Regions are ViT patches** (`mask_layout=\"patch\"`): each frame keeps its top {k} of {g}x{g} "
                "patches, scored by a convolution that never receives a gradient (it keeps its initial weights); "
                "the pixel-space prompt is doubled inside them (red, outlined)."
            )
        if not c.use_temporal_prompt:
            temporal = "This model has no temporal prompt."
        elif c.variant == "paper":
            temporal = (
                "**Temporal prompt:** between frames i and i+1 the model inserts ceil("
                f"{c.insertion_scale:g} x variation) prompt tokens (at most {c.max_inserted_tokens}), the variation "
                "being 1 - cosine of the two frames' descriptors: more tokens where the video changes."
            )
        else:
            temporal = (
                "**Temporal prompt:** no tokens are inserted. A per-frame weight (min-max normalised; here over "
                "this one video) scales an inter-frame prompt that is added to each frame's local prompts."
            )
        return regions + "\n\n" + temporal


# ----------------------------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------------------------


def overlay_regions(frames: np.ndarray, mask: torch.Tensor | None, patch: int, layout: str) -> list[np.ndarray]:
    """Frames `[T, S, S, 3]` uint8 with the selected cells of `mask` `[T, g, g]` tinted red (pixels expanded with
    the model's layout), enlarged to at least `DISPLAY_SIZE`; patch regions also get a yellow outline."""
    scale = max(1, -(-DISPLAY_SIZE // frames.shape[1]))
    out = []
    selected = None
    if mask is not None:
        selected = grid_to_pixels(mask[None].to(torch.uint8), patch, layout)[0].bool().numpy()  # [T, S, S]
    for t, frame in enumerate(frames):
        image = frame.astype(np.float32)
        if selected is not None:
            inside = selected[t][..., None]
            image = np.where(inside, 0.35 * image + 0.65 * REGION_COLOUR, 0.7 * image)
        image = np.repeat(np.repeat(image.round().astype(np.uint8), scale, axis=0), scale, axis=1)
        if selected is not None and layout == "patch":
            cell = patch * scale
            for i, j in mask[t].nonzero().tolist():
                box = image[i * cell : (i + 1) * cell, j * cell : (j + 1) * cell]
                for edge in (box[:2], box[-2:], box[:, :2], box[:, -2:]):
                    edge[...] = OUTLINE_COLOUR
        out.append(image)
    return out


def temporal_plot(weights, inserted, variation, num_frames: int) -> np.ndarray:
    """Bar chart of the frame weights (official) or of the tokens inserted per gap (paper), as an RGB image."""
    figure = Figure(figsize=(7, 2.6), dpi=100)
    axis = figure.add_subplot()
    if weights is not None:
        axis.bar(np.arange(1, num_frames + 1), weights.numpy(), color="#d62728")
        axis.set(xlabel="frame", ylabel="weight", ylim=(0, 1.05), title="Per-frame temporal weights")
        axis.set_xticks(np.arange(1, num_frames + 1))
    elif inserted is not None:
        gaps = inserted[: max(num_frames - 1, 0)]
        positions = np.arange(1, len(gaps) + 1)
        axis.bar(positions, gaps, color="#1f77b4", label="inserted tokens")
        axis.set(xlabel="gap after frame", ylabel="tokens", title="Prompt tokens inserted between frames")
        axis.set_xticks(positions)
        if variation is not None:
            twin = axis.twinx()
            twin.plot(positions, variation[0][: len(gaps)].float().numpy(), color="#ff7f0e", marker="o")
            twin.set_ylabel("variation")
    else:
        axis.text(0.5, 0.5, "no temporal prompt in this model", ha="center", va="center")
        axis.set_axis_off()
    figure.tight_layout()
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# ----------------------------------------------------------------------------------------------------------------
# Errors: a message the visitor can act on, never a stack trace
# ----------------------------------------------------------------------------------------------------------------

_PATH = re.compile(r"'?(?:/[^\s'/]+)+/([^\s'/]+)'?")


def _user_errors(fn):
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (VideoCheckError, VideoDecodeError) as error:  # name the file, not its temporary path
            raise gr.Error(html.escape(_PATH.sub(r"\1", str(error)), quote=False), print_exception=False) from None
        except Exception as error:
            logger.exception("request failed")
            raise gr.Error(
                f"Something went wrong ({type(error).__name__}); the server log has the details.", print_exception=False
            ) from None

    return wrapper


# ----------------------------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------------------------


def gallery_videos(gallery_dir, cache_dir, num_synthetic: int = 12) -> list[GalleryVideo]:
    """`gallery_dir` alone when given; else held-out synthetic clips (rendered once) plus the real sample videos."""
    if gallery_dir is not None:
        return scan_videos(gallery_dir, source=Path(gallery_dir).name)
    videos = scan_videos(ensure_synthetic_clips(Path(cache_dir) / "synthetic", num_synthetic), source="synthetic")
    if SAMPLE_VIDEOS.is_dir():
        videos += scan_videos(SAMPLE_VIDEOS, source="sample")
    return videos


def build_demo(
    model_path: str = DEFAULT_MODEL,
    gallery_dir=None,
    cache_dir=DEFAULT_CACHE,
    max_upload_mb: float = 50,
    max_duration_s: float = 120,
) -> gr.Blocks:
    """The demo's Blocks: loads the model, builds and embeds the gallery, wires the three tabs."""
    model, processor = load_model(str(model_path))
    videos = gallery_videos(gallery_dir, cache_dir)
    backend = DemoBackend(model, processor, videos, cache_dir, max_upload_mb, max_duration_s)
    captioned = [v for v in videos if v.caption]
    limits = f"Videos up to {max_upload_mb:g} MB and {max_duration_s:g} s."

    with gr.Blocks(title="STOP video demo") as demo:
        uploads = gr.State([])
        gr.Markdown(
            "# STOP: prompting a frozen CLIP for video\n"
            "Spatial-temporal dynamic prompts (CVPR 2025) over a frozen `transformers` CLIP. " + backend.description()
        )
        with gr.Tab(TAB_NAMES[0]):
            gr.Markdown("Describe a video; the gallery is ranked by cosine similarity to your text.")
            with gr.Row():
                query = gr.Textbox(label="Query", placeholder="a red circle moving left", scale=4)
                top_k = gr.Slider(1, 12, value=4, step=1, label="Results", scale=1)
            search_button = gr.Button("Search", variant="primary")
            results = gr.Gallery(label="Best matches (rank. score · caption)", columns=4, height="auto")
            table = gr.Dataframe(headers=["rank", "score", "video", "caption", "source"], label="Scores")
            if captioned:
                gr.Examples([[v.caption] for v in captioned[:6]], inputs=[query], label="Captions of gallery clips")
            with gr.Accordion("Add your own video to the gallery", open=False):
                gr.Markdown(f"It stays in your session's gallery only. {limits}")
                new_video = gr.Video(label="Video", sources=["upload"])
                add_button = gr.Button("Add to gallery")
                add_status = gr.Markdown()

        with gr.Tab(TAB_NAMES[1]):
            gr.Markdown(
                "Zero-shot recognition: each label becomes the text “" + DEFAULT_HYPOTHESIS_TEMPLATE.format("label")
                + "”; the probabilities are a softmax over CLIP's scaled cosine similarities. " + limits
            )
            with gr.Row():
                with gr.Column():
                    recognize_video = gr.Video(label="Video", sources=["upload"])
                    labels = gr.Textbox(label="Candidate labels (comma-separated)", value=", ".join(CLASS_NAMES))
                    recognize_button = gr.Button("Recognize", variant="primary")
                prediction = gr.Label(label="Prediction", num_top_classes=5)
            if captioned:
                gr.Examples([[v.path] for v in captioned[:4]], inputs=[recognize_video], label="Gallery clips")

        with gr.Tab(TAB_NAMES[2]):
            gr.Markdown(backend.layout_note())
            with gr.Row():
                explain_video = gr.Video(label="Video", sources=["upload"])
                with gr.Column():
                    pick = gr.Dropdown(backend.video_choices(), value=None, label="…or pick a gallery video")
                    explain_button = gr.Button("Show what STOP looks at", variant="primary")
                    summary = gr.Markdown()
            frames = gr.Gallery(
                label="Sampled frames, spatial-prompt regions in red", columns=4, height="auto", format="png"
            )
            plot = gr.Image(label="Temporal prompt", type="numpy", format="png")

        search_button.click(_user_errors(backend.search), [query, top_k, uploads], [results, table], api_name="search")
        query.submit(_user_errors(backend.search), [query, top_k, uploads], [results, table], api_visibility="private")
        add_button.click(
            _user_errors(backend.add_video), [new_video, uploads], [uploads, add_status, pick], api_name="add_video"
        )
        recognize_button.click(
            _user_errors(backend.recognize), [recognize_video, labels], prediction, api_name="recognize"
        )
        pick.change(backend.video_path, [pick, uploads], explain_video, api_visibility="private")
        explain_button.click(_user_errors(backend.explain), explain_video, [frames, plot, summary], api_name="explain")

    demo.queue(default_concurrency_limit=1)
    return demo


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="STOP model folder or Hub id (default: %(default)s)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--max_upload_mb", type=float, default=50, help="largest video accepted, in MB")
    parser.add_argument("--max_duration_s", type=float, default=120, help="longest video accepted, in seconds")
    parser.add_argument("--gallery_dir", default=None, help="search this folder instead of the default gallery")
    parser.add_argument("--cache_dir", default=str(DEFAULT_CACHE), help="synthetic clips and embedding cache")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    demo = build_demo(args.model, args.gallery_dir, args.cache_dir, args.max_upload_mb, args.max_duration_s)
    logger.info(f"demo built in {time.perf_counter() - start:.1f}s")
    allowed = [args.cache_dir, args.gallery_dir or str(SAMPLE_VIDEOS)]
    demo.launch(
        server_port=args.port, max_file_size=f"{args.max_upload_mb:g}mb", allowed_paths=allowed, show_error=False
    )


if __name__ == "__main__":
    main()
