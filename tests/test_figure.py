"""The README figure reads how to draw the spatial mask from the model, not from its variant."""

from types import SimpleNamespace

import matplotlib.image
import pytest
import torch
from transformers.utils import ModelOutput

from benchmarks.figure import main, mask_layout, overlay
from training.synthetic import write_video


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A random official-variant STOP model (32 px frames, 4 x 4 grid) saved with its processor."""
    from transformers import CLIPTokenizer

    from modeling_stop.processing_stop import STOPProcessor, STOPVideoProcessor
    from tests.tiny import tiny_stop
    from training.tokenizer import bytes_to_unicode

    tokens = list(bytes_to_unicode().values()) + ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)
    model = tiny_stop(clip_kwargs=dict(image_size=32, patch_size=8, vocab=len(tokens)), num_frames=4, max_words=16)
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    STOPProcessor(STOPVideoProcessor(num_frames=4, size=32), tokenizer, max_words=16).save_pretrained(folder)
    return folder, model


def test_the_layout_comes_from_an_output_field_then_the_spatial_prompter():
    official = SimpleNamespace(spatial_prompter=SimpleNamespace(layout="official"))
    assert mask_layout(official, ModelOutput()) == "official"
    assert mask_layout(official, ModelOutput(spatial_mask_layout="patch")) == "patch"
    assert mask_layout(official, ModelOutput(video_model_output=ModelOutput(region_layout="patch"))) == "patch"
    assert mask_layout(SimpleNamespace(spatial_prompter=SimpleNamespace()), ModelOutput()) == "patch"
    assert mask_layout(SimpleNamespace(spatial_prompter=None), ModelOutput()) == "patch"


def test_the_overlay_tints_exactly_the_cells_of_the_layout(tiny_folder):
    from modeling_stop import STOPProcessor

    folder, _ = tiny_folder
    processor = STOPProcessor.from_pretrained(folder)
    pixels = torch.zeros(1, 3, 8, 8)
    mask = torch.zeros(1, 2, 2, dtype=torch.bool)
    mask[0, 0, 1] = True  # cell (0, 1) of a 2 x 2 grid, patch 4
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    expected = {"patch": (rows < 4) & (cols >= 4), "official": (rows % 2 == 0) & (cols % 2 == 1)}
    for layout, cells in expected.items():
        red = overlay(pixels, mask, 4, layout, processor)[0]
        tinted = torch.from_numpy(red[..., 0].astype(int) - red[..., 1].astype(int)) > 50
        assert torch.equal(tinted, cells), layout


def test_the_figure_of_a_saved_model_is_written(tiny_folder, tmp_path):
    folder, model = tiny_folder
    frames = torch.randint(0, 255, (8, 32, 32, 3), dtype=torch.uint8).numpy()
    write_video(tmp_path / "clip.mp4", frames, fps=8)
    output = tmp_path / "figure.png"
    main(["--model", str(folder), "--video", str(tmp_path / "clip.mp4"), "--output", str(output)])
    image = matplotlib.image.imread(output)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 4 * 100
    assert model.spatial_prompter.layout == "official"
