"""Gradio demo of STOP: text-to-video search, zero-shot recognition, and what the prompts look at.

    python app.py [--model PATH_OR_HUB_ID] [--gallery DIR_OR_DATASET] [--port N] [--cache_dir DIR]
                  [--max_upload_mb MB] [--max_duration_s S] [--max_frames N] [--max_fps FPS]

The model comes from `--model`, else the `STOP_DEMO_MODEL` environment variable (e.g. a Space variable), else the
repository's `checkpoints/stop-synthetic` when this folder sits in the repository. It is loaded with its own code
(`trust_remote_code=True`). The gallery is `--gallery` (a folder of videos or a Hub dataset id; env
`STOP_DEMO_GALLERY`), else the `gallery/` (or `examples/`) folder of the model, plus the videos a visitor adds
(kept for their session only, in a bounded cache that expires). Without gallery clips the demo serves uploads.
"""

import argparse
import html
import logging
import os
import re
import time
from functools import wraps
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPOSITORY_MODEL = HERE.parent / "checkpoints" / "stop-synthetic"
DEFAULT_CACHE = Path(os.environ.get("STOP_DEMO_CACHE", HERE / ".cache"))
TAB_NAMES = ("Search", "Recognize", "What STOP looks at")
SESSION_MAX_AGE_S = 3600  # uploads, their analyses and gradio's copies of them are dropped after an hour
CACHE_SWEEP_S = 600

logger = logging.getLogger("stop-demo")


def default_model() -> str | None:
    return os.environ.get("STOP_DEMO_MODEL") or (str(REPOSITORY_MODEL) if REPOSITORY_MODEL.is_dir() else None)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=default_model(),
        help="STOP model folder or Hub id (default: $STOP_DEMO_MODEL, else %(default)s)",
    )
    parser.add_argument(
        "--gallery",
        "--gallery_dir",
        dest="gallery",
        default=os.environ.get("STOP_DEMO_GALLERY"),
        help="folder of videos or Hub dataset id (default: the model's gallery/ or examples/ folder)",
    )
    parser.add_argument("--max_gallery", type=int, default=200, help="at most this many gallery videos")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--cache_dir", default=str(DEFAULT_CACHE), help="gallery embedding cache")
    parser.add_argument("--max_upload_mb", type=float, default=50, help="largest video accepted, in MB")
    parser.add_argument("--max_duration_s", type=float, default=120, help="longest video accepted, in seconds")
    parser.add_argument("--max_frames", type=int, default=3600, help="most frames in a video accepted")
    parser.add_argument("--max_fps", type=float, default=60, help="highest frame rate accepted")
    parser.add_argument("--max_uploads", type=int, default=8, help="uploads kept per session")
    args = parser.parse_args(argv)
    if args.model is None:
        parser.error("no model: set STOP_DEMO_MODEL or pass --model PATH_OR_HUB_ID")
    return args


def _modules():
    """The demo's own modules, imported after argument parsing (they pull in torch)."""
    if __package__:
        from . import backend, drawing, gallery
    else:  # python app.py: the modules sit beside this file
        import backend
        import drawing
        import gallery
    return backend, drawing, gallery


# ----------------------------------------------------------------------------------------------------------------
# What STOP looks at: an analysis -> frames, plot and text
# ----------------------------------------------------------------------------------------------------------------


def _grid_text(mask, layout: str) -> str:
    g = mask.shape[-1]
    cells = ", ".join(f"({i}, {j})" for i, j in mask.nonzero().tolist())
    if layout == "official":
        return (
            f"cells {cells} of the {g}x{g} grid, each the pixels (row, column) with row mod {g} = i and "
            f"column mod {g} = j: a lattice of dots over the whole frame"
        )
    return f"the patches (row, column) {cells} of the {g}x{g} patch grid"


def render_explanation(analysis, layer: int):
    """`(frames with captions, plot image, summary markdown, number of layers)` for one analysis at one layer."""
    _, drawing, _ = _modules()
    diagnostics = analysis.diagnostics
    num_frames = len(analysis.frames)
    num_layers = max((d.num_layers for d in diagnostics if d.layered), default=1)
    regions = sorted((d for d in diagnostics if d.kind == "regions"), key=lambda d: not d.layered)
    series = [d for d in diagnostics if d.kind != "regions"]
    mask = regions[0].at(layer) if regions else None
    patch = analysis.frames.shape[1] // mask.shape[-1] if mask is not None else 1
    images = drawing.overlay_regions(analysis.frames, mask, patch, analysis.layout)

    def where(d):
        return f"`{d.name}`" + (f" at layer {min(layer, d.num_layers)} of {d.num_layers}" if d.layered else "")

    captions = []
    for t, source in enumerate(analysis.source_frames):
        parts = [f"frame {t + 1} (source frame {source})"]
        for d in series:
            values = d.at(layer)
            if d.per == "frame" and t < len(values):
                parts.append(f"{d.name.replace('_', ' ')} {values[t].item():.2f}")
            elif d.per == "gap" and d.kind == "counts" and t < len(values):
                parts.append(f"{values[t].item()} {d.name.replace('_', ' ')} after it")
        captions.append(" · ".join(parts))
    plot = drawing.series_plot(
        [(where(d).replace("`", ""), d.per, d.at(layer).float().numpy()) for d in series], num_frames
    )
    lines = []
    if mask is not None:
        lines.append(f"{where(regions[0])}: frame 1 keeps {_grid_text(mask[0], analysis.layout)}.")
    for d in series:
        values = d.at(layer)
        if not len(values):
            continue
        if d.kind == "counts":
            lines.append(f"{where(d)} per gap: {values.tolist()} (total {int(values.sum())}).")
        else:
            unit = "frame" if d.per == "frame" else "gap after frame"
            lines.append(f"{where(d)}: highest on {unit} {int(values.argmax()) + 1} (max {values.max().item():.3f}).")
    summary = "\n\n".join(lines) or "This model reports no spatial or temporal prompt diagnostics."
    return list(zip(images, captions)), plot, summary, num_layers


def layout_note(model) -> str:
    layout = getattr(getattr(model, "spatial_prompter", None), "layout", None) or "patch"
    if getattr(model, "spatial_prompter", None) is None:
        regions = "This model has no spatial prompt, so no regions are highlighted."
    elif layout == "official":
        regions = (
            "**With the authors' mask layout the regions are not patches**: cell (i, j) of the grid is every pixel "
            "whose row is i and column is j modulo the grid size, a lattice of dots over the whole frame."
        )
    else:
        regions = "**Regions are ViT patches**: the patches the spatial prompt selects are red, outlined in yellow."
    return (
        regions + "\n\nBelow the frames: every per-frame or per-gap value the model reports (frame weights, prompt "
        "tokens inserted between frames, ...). When the model reports them per layer, pick the layer."
    )


# ----------------------------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------------------------

_PATH = re.compile(r"'?(?:/[^\s'/]+)+/([^\s'/]+)'?")


def _user_errors(fn, gr, errors):
    """Turn the backend's input errors into a message (the file named, not its temporary path), never a trace."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except errors as error:
            raise gr.Error(html.escape(_PATH.sub(r"\1", str(error)), quote=False), print_exception=False) from None
        except Exception as error:
            logger.exception("request failed")
            raise gr.Error(
                f"Something went wrong ({type(error).__name__}); the server log has the details.", print_exception=False
            ) from None

    return wrapper


def _slider_maximum(gallery_size: int) -> int:
    return max(gallery_size, 2)  # a slider needs maximum > minimum (1); a search never returns more than there are


def create_backend(model_id: str, gallery=None, cache_dir=DEFAULT_CACHE, limits=None, max_gallery=200, **kwargs):
    backend, _, gallery_module = _modules()
    model, processor = backend.load_model(str(model_id))
    folder = gallery_module.find_gallery(str(model_id), gallery)
    videos = gallery_module.scan_videos(folder, limit=max_gallery) if folder is not None else []
    template = backend.hypothesis_template(model, str(model_id))
    limits = limits or gallery_module.VideoLimits()
    demo_backend = backend.DemoBackend(
        model, processor, videos, template=template, limits=limits, cache_dir=cache_dir, **kwargs
    )
    demo_backend.gallery_folder = folder
    return demo_backend


def build_demo(
    model_id: str | None = None,
    gallery=None,
    cache_dir=DEFAULT_CACHE,
    limits=None,
    max_gallery=200,
    max_uploads=8,
    backend=None,
):
    """The demo's Blocks over `backend` (built from the model and gallery when not given)."""
    import gradio as gr

    backend_module, _, gallery_module = _modules()
    if backend is None:
        backend = create_backend(
            model_id or default_model(),
            gallery,
            cache_dir,
            limits,
            max_gallery,
            max_uploads=max_uploads,
            max_age_s=SESSION_MAX_AGE_S,
        )
    errors = (backend_module.DemoInputError, gallery_module.VideoCheckError)
    videos = backend.videos
    captioned = [v for v in videos if v.caption]
    labels_default = list(dict.fromkeys(v.label for v in videos if v.label))
    config = backend.model.config
    num_frames = getattr(getattr(backend.processor, "video_processor", None), "num_frames", "?")
    limits_text = backend.limits.describe()
    if videos:
        gallery_text = f"**gallery:** {len(videos)} videos from `{backend.gallery_folder.name}/`"
    else:
        gallery_text = (
            "**No gallery clips** came with this model (no `gallery/` or `examples/` folder, and no "
            "`--gallery`): search covers the videos you add."
        )

    # Annotated with the class itself (this module has no postponed annotations): gradio injects the request.
    def session_of(request: gr.Request) -> str:
        if request is None or not request.session_hash:
            raise backend_module.DemoInputError("This endpoint needs a session (call it through gradio_client).")
        return request.session_hash

    def choices(session):
        all_videos = [*videos, *(u.video for u in backend.session_uploads(session))]
        return [(f"{v.name} · {v.caption}" if v.caption else v.name, v.sha256[:16]) for v in all_videos]

    def search(query, top_k, request: gr.Request):
        found = backend.search(query, top_k, session_of(request))
        results, rows = [], []
        for position, (video, score) in enumerate(found, start=1):
            results.append((video.path, f"{position}. {score:.3f} · {video.caption or video.name}"))
            rows.append([position, round(score, 4), video.name, video.caption or "", video.source])
        return results, rows

    def add_video(path, request: gr.Request):
        session = session_of(request)
        status = backend.add_video(path, session)
        size = backend.gallery_size(session)
        return status, gr.update(choices=choices(session)), gr.update(maximum=_slider_maximum(size))

    def recognize(path, labels):
        return backend.recognize(path, labels)

    def explain(path, layer):
        analysis, layer = backend.explain(path, layer)
        frames, plot, summary, num_layers = render_explanation(analysis, layer)
        layer_update = gr.update(visible=num_layers > 1, maximum=num_layers, value=layer)
        return frames, plot, summary, layer_update

    def pick_video(video_id, request: gr.Request):
        session = session_of(request)
        all_videos = [*videos, *(u.video for u in backend.session_uploads(session))]
        return next((v.path for v in all_videos if v.sha256[:16] == video_id), None)

    with gr.Blocks(title="STOP video demo", delete_cache=(CACHE_SWEEP_S, SESSION_MAX_AGE_S)) as demo:
        gr.Markdown(
            "# STOP: prompting a frozen CLIP for video\n"
            "Spatial-temporal dynamic prompts (CVPR 2025) over a frozen `transformers` CLIP. "
            f"**Model:** `{config._name_or_path}` · variant `{getattr(config, 'variant', '?')}` · "
            f"{num_frames} frames · " + gallery_text
        )
        with gr.Tab(TAB_NAMES[0]):
            gr.Markdown("Describe a video; the gallery is ranked by cosine similarity to your text.")
            with gr.Row():
                query = gr.Textbox(label="Query", placeholder="a red circle moving left", scale=4)
                top_k = gr.Slider(
                    1, _slider_maximum(len(videos)), value=min(4, max(len(videos), 1)), step=1, label="Results", scale=1
                )
            search_button = gr.Button("Search", variant="primary")
            results = gr.Gallery(label="Best matches", columns=4, height="auto")
            table = gr.Dataframe(headers=["rank", "score", "video", "caption", "source"], label="Scores")
            if captioned:
                gr.Examples([[v.caption] for v in captioned[:6]], inputs=[query], label="Captions of gallery clips")
            with gr.Accordion("Add your own video to the gallery", open=not videos):
                gr.Markdown(
                    f"It stays in your session's gallery only (at most {backend.max_uploads} videos, for "
                    f"an hour). {limits_text}"
                )
                new_video = gr.Video(label="Video", sources=["upload"])
                add_button = gr.Button("Add to gallery")
                add_status = gr.Markdown(label="Status")

        with gr.Tab(TAB_NAMES[1]):
            example = backend_module.format_label(backend.template, "label")
            gr.Markdown(
                f"Zero-shot recognition: each label becomes the text “{example}”; the probabilities are a "
                f"softmax over CLIP's scaled cosine similarities. {limits_text}"
            )
            with gr.Row():
                with gr.Column():
                    recognize_video = gr.Video(label="Video", sources=["upload"])
                    labels = gr.Textbox(
                        label="Candidate labels (comma-separated)",
                        value=", ".join(labels_default),
                        placeholder="running, swimming, cooking",
                    )
                    recognize_button = gr.Button("Recognize", variant="primary")
                prediction = gr.Label(label="Prediction", num_top_classes=5)
            if captioned:
                gr.Examples([[v.path] for v in captioned[:4]], inputs=[recognize_video], label="Gallery clips")

        with gr.Tab(TAB_NAMES[2]):
            gr.Markdown(layout_note(backend.model))
            with gr.Row():
                explain_video = gr.Video(label="Video", sources=["upload"])
                with gr.Column():
                    pick = gr.Dropdown(choices(None), value=None, label="…or pick a gallery video")
                    layer = gr.Number(value=1, precision=0, label="Layer", visible=False)
                    explain_button = gr.Button("Show what STOP looks at", variant="primary")
                    summary = gr.Markdown(label="Summary")
            frames = gr.Gallery(
                label="Sampled frames, spatial-prompt regions in red", columns=4, height="auto", format="png"
            )
            plot = gr.Image(label="Temporal prompt", type="numpy", format="png")

        search_fn = _user_errors(search, gr, errors)
        # preprocess=False: the handler validates the number of results itself (a message, not a traceback).
        search_button.click(search_fn, [query, top_k], [results, table], api_name="search", preprocess=False)
        query.submit(search_fn, [query, top_k], [results, table], api_visibility="private", preprocess=False)
        add_button.click(
            _user_errors(add_video, gr, errors), new_video, [add_status, pick, top_k], api_name="add_video"
        )
        recognize_button.click(
            _user_errors(recognize, gr, errors), [recognize_video, labels], prediction, api_name="recognize"
        )
        pick.change(pick_video, pick, explain_video, api_visibility="private")
        explain_button.click(
            _user_errors(explain, gr, errors),
            [explain_video, layer],
            [frames, plot, summary, layer],
            api_name="explain",
        )

    demo.queue(default_concurrency_limit=1)
    demo.stop_backend = backend
    return demo


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow a shared CPU down
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _, _, gallery_module = _modules()
    limits = gallery_module.VideoLimits(args.max_upload_mb, args.max_duration_s, args.max_frames, args.max_fps)
    start = time.perf_counter()
    demo = build_demo(args.model, args.gallery, args.cache_dir, limits, args.max_gallery, args.max_uploads)
    backend = demo.stop_backend
    logger.info(f"demo built in {time.perf_counter() - start:.1f}s: {len(backend.videos)} gallery videos")
    folder = backend.gallery_folder
    demo.launch(
        server_port=args.port,
        max_file_size=f"{args.max_upload_mb:g}mb",
        allowed_paths=[str(folder)] if folder is not None else None,
        show_error=False,
    )


if __name__ == "__main__":
    main()
