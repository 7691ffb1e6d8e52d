import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPTokenizer

from modeling_stop.configuration_stop import STOPConfig
from modeling_stop.processing_stop import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, STOPProcessor, STOPVideoProcessor
from modeling_stop.video_io import VideoDecodeError, read_video_frames
from tests.conftest import REPO_ROOT
from tests.video_factory import indexed_frames, moving_frames, write_video

WORDS = ("a", "photo", "of", "cat", "dog", "person", "is", "cooking", "in", "the", "kitchen")


def byte_characters() -> list[str]:
    """CLIP's byte-level alphabet: the 256 printable characters its BPE starts from."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [256 + i for i, b in enumerate(b for b in range(256) if b not in printable)]
    return [chr(c) for c in printable + shifted]


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A real CLIP BPE tokenizer over a tiny vocabulary: the byte alphabet plus merges spelling `WORDS`."""
    chars = byte_characters()
    tokens, merges = chars + [c + "</w>" for c in chars], []
    for word in WORDS:
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            if (pieces[0], pieces[1]) not in merges:
                merges.append((pieces[0], pieces[1]))
                tokens.append(pieces[0] + pieces[1])
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(dict.fromkeys(tokens))}, merges=merges)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_clip_tokenizer()


@pytest.fixture(scope="module")
def processor(tokenizer):
    return STOPProcessor(STOPVideoProcessor(num_frames=8, size=32), tokenizer, max_words=8)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return {
        "clip30": write_video(root / "clip30.mp4", indexed_frames(30)),
        "short3": write_video(root / "short3.mp4", indexed_frames(3)),
        "single": write_video(root / "single.mp4", indexed_frames(1)),
        "moving": write_video(root / "moving.mp4", moving_frames(12, 40, 72), pix_fmt="yuv420p", options={}),
    }


def manual_pixel_values(frame: np.ndarray, size: int) -> torch.Tensor:
    """Reference preprocessing of one HWC uint8 frame, written out step by step."""
    height, width = frame.shape[:2]
    scale = size / min(height, width)
    out_h, out_w = (size, int(width * scale)) if height <= width else (int(height * scale), size)
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(out_h, out_w), mode="bicubic", antialias=True, align_corners=False)
    x = x.clamp(0, 255).round()
    top, left = round((out_h - size) / 2), round((out_w - size) / 2)
    x = x[0, :, top : top + size, left : left + size] / 255
    return (x - torch.tensor(OPENAI_CLIP_MEAN)[:, None, None]) / torch.tensor(OPENAI_CLIP_STD)[:, None, None]


# ---------------------------------------------------------------- videos


def test_pixel_values_shapes_dtypes_and_padding_mask(processor, clips):
    out = processor(videos=[clips["clip30"], clips["short3"], clips["single"]])
    assert out["pixel_values"].shape == (3, 8, 3, 32, 32) and out["pixel_values"].dtype == torch.float32
    assert out["video_mask"].dtype == torch.long
    assert out["video_mask"].tolist() == [[1] * 8, [1] * 3 + [0] * 5, [1] + [0] * 7]
    padding = out["pixel_values"][out["video_mask"] == 0]
    assert padding.shape[0] == 12 and torch.count_nonzero(padding) == 0  # zero frames after normalisation
    assert torch.count_nonzero(out["pixel_values"][out["video_mask"] == 1].flatten(1), dim=1).min() > 0
    assert -2.0 < out["pixel_values"].min() and out["pixel_values"].max() < 2.2  # CLIP-normalised range


def test_frame_indices_of_a_known_clip(processor, clips):
    out = processor(videos=[clips["clip30"], clips["short3"]], return_frame_indices=True)
    assert out["frame_indices"].tolist() == [[1, 5, 9, 13, 16, 20, 24, 28], [0, 1, 2, -1, -1, -1, -1, -1]]


def test_solid_colour_frame_is_normalised_with_clip_mean_and_std(processor):
    rgb = (200, 100, 50)
    video = np.empty((2, 40, 60, 3), np.uint8)
    video[...] = rgb
    pixels = processor(videos=video)["pixel_values"][0, :2]
    expected = (torch.tensor(rgb) / 255 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    torch.testing.assert_close(pixels, expected.view(1, 3, 1, 1).expand(2, 3, 32, 32), atol=1e-6, rtol=0)


def test_frames_are_resized_on_the_shortest_edge_and_centre_cropped(processor):
    generator = np.random.default_rng(0)
    for shape in [(3, 40, 72, 3), (3, 90, 50, 3), (3, 16, 20, 3)]:  # landscape, portrait, upscaled
        video = generator.integers(0, 256, shape, dtype=np.uint8)
        pixels = processor(videos=video)["pixel_values"][0, :3]
        for t in range(3):
            torch.testing.assert_close(pixels[t], manual_pixel_values(video[t], 32), atol=1e-5, rtol=0)


def test_resizing_while_decoding_gives_the_same_pixels_as_resizing_decoded_frames(processor, clips):
    full_frames, _ = read_video_frames(clips["moving"], 100)  # all 12 frames at 40x72
    from_file = processor(videos=clips["moving"])
    from_array = processor(videos=full_frames.numpy())
    assert torch.equal(from_file["pixel_values"], from_array["pixel_values"])


def test_one_video_a_list_or_a_batch_array(processor, clips):
    assert processor(videos=clips["clip30"])["pixel_values"].shape[0] == 1
    assert processor(videos=[clips["clip30"], clips["clip30"].read_bytes()])["pixel_values"].shape[0] == 2
    batch = np.stack([indexed_frames(10), indexed_frames(10)])
    assert processor(videos=batch)["pixel_values"].shape == (2, 8, 3, 32, 32)


def test_random_sampling_is_reproducible_with_a_generator_and_differs_from_uniform(processor, clips):
    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        return processor(videos=clips["clip30"], sampling="random", generator=generator, return_frame_indices=True)

    first, again = run(0), run(0)
    assert torch.equal(first["pixel_values"], again["pixel_values"])
    uniform = processor(videos=clips["clip30"], return_frame_indices=True)
    assert first["frame_indices"].tolist() != uniform["frame_indices"].tolist()
    assert first["frame_indices"].tolist() != run(1)["frame_indices"].tolist()


def test_target_fps_is_a_saved_setting(tokenizer, clips, tmp_path):
    video_processor = STOPVideoProcessor(num_frames=8, size=32, target_fps=2.0)
    assert video_processor(clips["clip30"], return_frame_indices=True)["frame_indices"][0].tolist() == [
        0,
        5,
        10,
        15,
        20,
        25,
        -1,
        -1,
    ]
    video_processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "video_preprocessor_config.json").read_text())["target_fps"] == 2.0
    loaded = STOPVideoProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == video_processor.to_dict()


def test_bad_video_in_a_batch_names_the_file(processor, clips, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        processor(videos=[clips["clip30"], broken])
    with pytest.raises(ValueError, match="text.*videos"):
        processor()


# ---------------------------------------------------------------- text


def test_text_is_padded_to_the_longest_and_truncated_to_max_words(processor, tokenizer):
    short, long = "a cat", "a photo of a person cooking in the kitchen with a dog"
    out = processor(text=[short, long])
    assert out["input_ids"].shape == (2, 8) and out["attention_mask"].shape == (2, 8)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids[:, 0].tolist() == [tokenizer.bos_token_id] * 2
    assert mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0] and ids[0, 3] == tokenizer.eos_token_id
    assert mask[1].tolist() == [1] * 8 and ids[1, -1] == tokenizer.eos_token_id  # truncated, end token kept
    assert tokenizer.convert_ids_to_tokens(ids[1, 1:7].tolist()) == [w + "</w>" for w in long.split()[:6]]

    assert processor(text=[short, "a dog"])["input_ids"].shape == (2, 4)  # padding=True: to the longest
    exact = processor(text=short, padding="max_length")
    assert exact["input_ids"].shape == (1, 8) and exact["attention_mask"].sum() == 4


def test_text_and_videos_together(processor, clips):
    out = processor(text=["a cat", "a dog"], videos=[clips["clip30"]])
    assert set(out.keys()) == {"input_ids", "attention_mask", "pixel_values", "video_mask"}


# ---------------------------------------------------------------- saving and loading


def test_auto_processor_loads_a_saved_processor_in_a_fresh_process(processor, clips, tmp_path):
    folder = tmp_path / "processor"
    processor.save_pretrained(folder)
    saved = json.loads((folder / "processor_config.json").read_text())
    assert saved["auto_map"] == {"AutoProcessor": "processing_stop.STOPProcessor"}
    assert saved["max_words"] == 8 and saved["video_processor"]["num_frames"] == 8
    assert {"processing_stop.py", "video_io.py", "tokenizer.json"} <= {p.name for p in folder.iterdir()}

    text, video = ["a photo of a cat", "a dog"], str(clips["moving"])
    expected = processor(text=text, videos=video, padding="max_length")
    script = (
        "import sys, torch\n"
        "from transformers import AutoProcessor\n"
        "processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "assert type(processor).__name__ == 'STOPProcessor', type(processor)\n"
        "assert processor.max_words == 8 and processor.video_processor.num_frames == 8\n"
        f"out = processor(text={text!r}, videos={video!r}, padding='max_length')\n"
        "torch.save(dict(out), sys.argv[2])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result_file = tmp_path / "out.pt"
    subprocess.run([sys.executable, "-c", script, str(folder), str(result_file)], check=True, env=env, cwd=tmp_path)
    loaded = torch.load(result_file)
    assert loaded.keys() == expected.keys()
    for key in expected:
        assert torch.equal(loaded[key], expected[key]), key


def test_from_pretrained_round_trip_in_process(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = STOPProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded.video_processor, STOPVideoProcessor)
    assert loaded.video_processor.to_dict() == processor.video_processor.to_dict()
    assert loaded.max_words == processor.max_words
    assert loaded.tokenizer("a photo of a cat").input_ids == processor.tokenizer("a photo of a cat").input_ids


def test_from_clip_and_from_model_config_read_the_checkpoint_geometry(tokenizer, tmp_path):
    clip_config = CLIPConfig(
        text_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
        vision_config={
            "image_size": 48,
            "patch_size": 16,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
    )
    clip_config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    processor = STOPProcessor.from_clip(tmp_path, num_frames=4, max_words=16)
    assert (processor.video_processor.size, processor.video_processor.num_frames, processor.max_words) == (48, 4, 16)
    assert processor(text="a cat")["input_ids"].tolist() == [tokenizer("a cat").input_ids]

    stop_config = STOPConfig(
        text_config=clip_config.text_config.to_dict(),
        vision_config=clip_config.vision_config.to_dict(),
        num_frames=6,
        max_words=20,
        spatial_top_k=2,
    )
    processor = STOPProcessor.from_model_config(stop_config, str(tmp_path))
    assert (processor.video_processor.size, processor.video_processor.num_frames, processor.max_words) == (48, 6, 20)


def test_checkpoint_tokenizer_when_present():
    folder = REPO_ROOT / "checkpoints" / "clip-synthetic"
    if not (folder / "tokenizer_config.json").exists():
        pytest.skip(f"{folder} not built yet")
    processor = STOPProcessor.from_clip(folder, num_frames=4, max_words=32)
    out = processor(text=["a photo of a cat"], padding="max_length")
    assert out["input_ids"].shape == (1, 32)
    assert out["input_ids"][0, 0] == processor.tokenizer.bos_token_id


def test_num_frames_is_honoured_at_call_time_and_as_a_from_pretrained_override(processor, clips, tmp_path):
    video = str(clips["clip30"])
    inputs = processor(videos=video, num_frames=5, return_frame_indices=True)
    assert inputs["pixel_values"].shape == (1, 5, 3, 32, 32) and inputs["video_mask"].tolist() == [[1] * 5]
    assert inputs["frame_indices"].tolist() == [[3, 9, 15, 21, 27]]  # segment centres of 30 frames
    assert processor(videos=video)["pixel_values"].shape[1] == 8  # the call changed nothing
    with pytest.raises(ValueError, match="num_frames"):
        processor(videos=video, num_frames=0)

    processor.save_pretrained(tmp_path)
    from transformers import AutoProcessor

    for loaded in (
        STOPProcessor.from_pretrained(tmp_path, num_frames=5),
        AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True, num_frames=5),
    ):
        assert loaded.video_processor.num_frames == 5 and loaded.video_processor.size == 32
        assert torch.equal(loaded(videos=video)["pixel_values"], inputs["pixel_values"])
        assert "num_frames" not in loaded.tokenizer.init_kwargs  # the override is the video processor's alone
    with pytest.raises(ValueError, match="num_frames"):
        STOPProcessor.from_pretrained(tmp_path, num_frames=0)
