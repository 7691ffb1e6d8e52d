"""The README figure: a test clip's sampled frames with the regions the spatial prompt selects, and the temporal
diagnostics the model reports (prompt tokens inserted per gap, or a weight per frame).

    python -m benchmarks.figure --model checkpoints/stop-synthetic --dataset_name data/synthetic \
        --output docs/stop_regions.png

Which pixels a region cell covers is what the model says (an output field named `...layout`, else its spatial
prompter's `layout`), so the figure draws any variant without knowing it.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from modeling_stop import STOPModel, STOPProcessor  # noqa: E402
from modeling_stop.modeling_stop import grid_to_pixels  # noqa: E402
from training.defaults import DEFAULT_STOP  # noqa: E402


def overlay(pixel_values: torch.Tensor, mask: torch.Tensor, patch: int, layout: str, processor) -> np.ndarray:
    """[T, 3, S, S] normalised frames + [T, g, g] mask -> [T, S, S, 3] uint8 with selected regions tinted red."""
    vp = processor.video_processor
    mean, std = torch.tensor(vp.mean)[:, None, None], torch.tensor(vp.std)[:, None, None]
    frames = (pixel_values * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    region = grid_to_pixels(mask[None].float(), patch, layout)[0].numpy()[..., None]
    red = np.array([1.0, 0.0, 0.0])
    return (255 * (frames * (1 - 0.55 * region) + 0.55 * region * red)).astype(np.uint8)


def mask_layout(model, outputs) -> str:
    """How a `spatial_mask` cell maps to pixels, as the model states it: an output field whose name ends in
    `layout` (at the top level or in a nested output), else the spatial prompter's `layout`; ViT patches otherwise."""
    nested = [value for value in outputs.values() if isinstance(value, dict)]
    for fields in (outputs, *nested):
        for name, value in fields.items():
            if isinstance(value, str) and name.endswith("layout"):
                return value
    return getattr(getattr(model, "spatial_prompter", None), "layout", None) or "patch"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_STOP))
    parser.add_argument("--dataset_name", default="data/synthetic")
    parser.add_argument("--video", default=None, help="a video file (default: the first test clip)")
    parser.add_argument("--output", default="docs/stop_regions.png")
    args = parser.parse_args(argv)

    model = STOPModel.from_pretrained(args.model).eval()
    processor = STOPProcessor.from_pretrained(args.model)
    video = args.video or str(sorted((Path(args.dataset_name) / "test").glob("*.mp4"))[0])
    inputs = processor(videos=[video])
    with torch.no_grad():
        out = model(pixel_values=inputs["pixel_values"], video_mask=inputs["video_mask"])
    layout = mask_layout(model, out)
    if out.spatial_mask is None:
        raise ValueError(f"{args.model} reports no spatial_mask (no spatial prompt): there are no regions to draw")
    frames = overlay(inputs["pixel_values"][0], out.spatial_mask[0], model.config.patch_size, layout, processor)
    t = frames.shape[0]
    fig, axes = plt.subplots(2, t, figsize=(1.6 * t, 3.6), gridspec_kw={"height_ratios": [3, 2]})
    for i in range(t):
        axes[0, i].imshow(frames[i])
        axes[0, i].set_axis_off()
        axes[0, i].set_title(f"frame {i}", fontsize=8)
    gs = axes[1, 0].get_gridspec()
    for ax in axes[1]:
        ax.remove()
    bottom = fig.add_subplot(gs[1, :])
    if out.inserted_tokens is not None:
        bottom.bar(np.arange(t - 1) + 0.5, out.inserted_tokens[0].numpy(), width=0.6, color="tab:red")
        bottom.set_ylabel("inserted tokens")
        bottom.set_xlabel("gap between frames i and i+1")
    elif out.frame_weights is not None:
        bottom.bar(np.arange(t), out.frame_weights[0].numpy(), color="tab:red")
        bottom.set_ylabel("frame weight")
    bottom.set_xlim(-0.5, t - 0.5)
    fig.suptitle(f"{Path(video).name}: selected regions ({layout} layout) and temporal prompts", fontsize=9)
    fig.tight_layout()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
