"""The data pipeline of training: dataset formats, columns, captions, labels, per-sample decoding failures."""

import csv
import json

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset

from modeling_stop.processing_stop import STOPVideoProcessor
from training.data import (
    EpochSampler,
    VideoTextCollator,
    VideoTextDataset,
    build_dataloader,
    class_names,
    load_video_text_dataset,
    reversed_pair_accuracy,
)
from training.synthetic import write_video
from training.tokenizer import bytes_to_unicode


def byte_tokenizer():
    """A CLIP tokenizer with CLIP's byte alphabet and no merges (514 tokens): tiny, offline, real special tokens."""
    from transformers import CLIPTokenizer

    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def write_clip(path, level, num_frames=4, size=32):
    """A short clip whose frames brighten from `level`."""
    frames = np.stack([np.full((size, size, 3), level + 20 * i, np.uint8) for i in range(num_frames)])
    write_video(path, frames)


def make_videofolder(root, splits=("train", "test"), num_videos=3, rows=None):
    """`root/{split}/{i}.mp4` + metadata.jsonl with caption, captions, label (string) columns."""
    for split in splits:
        (root / split).mkdir(parents=True)
        split_rows = []
        for i in range(num_videos):
            write_clip(root / split / f"{i}.mp4", 20 + 40 * i)
            split_rows.append(
                {
                    "file_name": f"{i}.mp4",
                    "caption": f"clip {i}",
                    "captions": [f"clip {i}", f"video {i}", f"movie {i}"],
                    "label": ["up", "down"][i % 2],
                }
            )
        with open(root / split / "metadata.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in (rows or split_rows))
    return root


class Processor:
    """The part of STOPProcessor the collator uses, over the byte tokenizer."""

    def __init__(self, max_words=16):
        self.tokenizer, self.max_words = byte_tokenizer(), max_words

    def __call__(self, text, padding="max_length"):
        return self.tokenizer(text, padding=padding, truncation=True, max_length=self.max_words, return_tensors="pt")


@pytest.fixture(scope="module")
def videofolder(tmp_path_factory):
    return make_videofolder(tmp_path_factory.mktemp("videofolder"))


def video_processor(num_frames=4):
    return STOPVideoProcessor(num_frames=num_frames, size=16)


def test_videofolder_loads_with_undecoded_video_column_and_decodes_per_item(videofolder):
    data = load_video_text_dataset(str(videofolder))
    assert sorted(data) == ["test", "train"]
    assert data["train"][0]["video"]["path"].endswith("0.mp4")  # Video(decode=False): a path, not a decoder
    item = VideoTextDataset(data["train"], video_processor(), training=True)[1]
    assert item["pixel_values"].shape == (4, 3, 16, 16) and item["video_mask"].tolist() == [1, 1, 1, 1]
    assert item["caption"] == "clip 1"


def test_csv_with_relative_path_column_and_configurable_column_names(tmp_path):
    (tmp_path / "clips").mkdir()
    with open(tmp_path / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip_path", "text", "category"])
        for i in range(3):
            write_clip(tmp_path / "clips" / f"{i}.mp4", 30 * i)
            writer.writerow([f"clips/{i}.mp4", f"text {i}", ["b", "a", "c"][i]])
    data = load_video_text_dataset(
        str(tmp_path), video_column="clip_path", caption_column="text", label_column="category"
    )
    assert data["train"][2]["clip_path"] == str(tmp_path / "clips" / "2.mp4")
    names = class_names(data, "category")
    assert names == ["a", "b", "c"]
    dataset = VideoTextDataset(
        data["train"],
        video_processor(),
        video_column="clip_path",
        caption_column="text",
        label_column="category",
        label_names=names,
        training=True,
    )
    assert dataset.labels() == [1, 0, 2]
    item = dataset[2]
    assert item["caption"] == "text 2" and item["label"] == 2 and item["pixel_values"].shape[0] == 4


def test_classlabel_labels_keep_their_indices_and_names():
    ds = Dataset.from_dict({"video": ["x.mp4", "y.mp4"], "label": [1, 0]}).cast_column(
        "label", ClassLabel(names=["zebra", "apple"])
    )
    assert class_names({"train": ds}, "label") == ["zebra", "apple"]  # ClassLabel order, not sorted
    assert VideoTextDataset(ds, None, caption_column=None, label_column="label").labels() == [1, 0]


def test_several_captions_per_video_one_per_epoch_in_training_all_in_evaluation(videofolder):
    data = load_video_text_dataset(str(videofolder), caption_column="captions")
    train = VideoTextDataset(data["train"], video_processor(), caption_column="captions", training=True, seed=3)
    drawn = []
    for epoch in range(8):
        train.set_epoch(epoch)
        drawn.append(train[0]["caption"])
    assert set(drawn) <= {"clip 0", "video 0", "movie 0"} and len(set(drawn)) > 1
    train.set_epoch(5)
    assert train[0]["caption"] == drawn[5]  # a pure function of (seed, epoch, index)
    texts, text_to_video = VideoTextDataset(data["test"], video_processor(), caption_column="captions").captions()
    assert len(texts) == 9 and text_to_video == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert texts[3:6] == ["clip 1", "video 1", "movie 1"]


def test_missing_column_error_names_the_column_and_the_available_ones(videofolder):
    with pytest.raises(ValueError, match=r"'text' not found in the train split.*'caption'.*--caption_column"):
        load_video_text_dataset(str(videofolder), caption_column="text")
    with pytest.raises(ValueError, match=r"'category' not found.*--label_column"):
        load_video_text_dataset(str(videofolder), label_column="category")


def test_corrupt_video_comes_back_as_a_named_failure_and_the_batch_goes_on(tmp_path):
    root = make_videofolder(tmp_path / "data", splits=("train",))
    (root / "train" / "1.mp4").write_bytes(b"this is not a video" * 50)
    data = load_video_text_dataset(str(root))
    dataset = VideoTextDataset(data["train"], video_processor(), training=True)
    loader = build_dataloader(dataset, VideoTextCollator(Processor()), batch_size=3, num_workers=1)
    (batch,) = list(loader)  # decoded in a worker process
    assert batch["indices"].tolist() == [0, 2]
    assert batch["pixel_values"].shape == (2, 4, 3, 16, 16) and batch["input_ids"].shape == (2, 16)
    assert len(batch["failed"]) == 1 and "1.mp4" in batch["failed"][0]


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    sampler = EpochSampler(20, shuffle=True, seed=1)
    first = list(sampler)
    assert list(sampler) == first and sorted(first) == list(range(20))
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(EpochSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_reversed_pair_accuracy_counts_videos_preferring_their_own_caption():
    # videos 0/1 are twins, 2/3 are twins; sim[i, j] = video i vs caption of video j
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.0],  # 0 prefers its own caption: right
            [0.8, 0.2, 0.0, 0.0],  # 1 prefers its twin's: wrong
            [0.0, 0.0, 0.5, 0.5],  # tie: wrong
            [0.0, 0.0, 0.1, 0.7],
        ]
    )  # right
    results = reversed_pair_accuracy(sim, ["p", "p", "q", "q"], motions=["slide", "slide", "fade", "fade"])
    assert results == {"pair_accuracy": 0.5, "pair_accuracy/fade": 0.5, "pair_accuracy/slide": 0.5}
    assert reversed_pair_accuracy(sim, ["a", "b", "c", "c"]) == {"pair_accuracy": 0.5}  # unpaired ids are ignored
    assert reversed_pair_accuracy(sim, ["a", "b", "c", "d"]) == {}


# --------------------------------------------------------------------------------------------- bad inputs at load


@pytest.mark.parametrize(
    "caption, problem",
    [
        (None, "a null caption"),
        ([], "an empty caption list"),
        ([None], "a caption list with a non-string item None"),
        ("", "an empty caption"),
        ("   ", "an empty caption"),
        (["ok", ""], "an empty caption in its list"),
    ],
)
def test_bad_captions_are_rejected_at_load_naming_row_video_and_file(tmp_path, caption, problem):
    root = make_videofolder(tmp_path / "data", splits=("train",))
    rows = [json.loads(line) for line in (root / "train" / "metadata.jsonl").read_text().splitlines()]
    column = "caption" if isinstance(caption, str) else "captions"  # a column of strings, or of lists
    rows[1][column] = caption
    (root / "train" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError) as info:
        load_video_text_dataset(str(root), caption_column=column)
    message = str(info.value)
    assert f"has {problem} in column {column!r}" in message
    other = "captions" if column == "caption" else "caption"
    row = next(
        i
        for i, r in enumerate(load_video_text_dataset(str(root), caption_column=other)["train"]["video"])
        if r["path"].endswith("1.mp4")
    )
    assert f"Row {row} of the train split" in message and "1.mp4" in message
    assert str(root / "train" / "metadata.jsonl") in message


def test_a_malformed_metadata_line_names_the_file_and_the_line(tmp_path):
    root = make_videofolder(tmp_path / "data", splits=("train",))
    lines = (root / "train" / "metadata.jsonl").read_text().splitlines()
    lines[1] = lines[1][:-5]  # cut off the end of the object
    (root / "train" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metadata\.jsonl, line 2: not valid JSON"):
        load_video_text_dataset(str(root))


def test_a_mistyped_local_dataset_path_says_so_instead_of_blaming_the_hub(tmp_path, monkeypatch):
    make_videofolder(tmp_path / "data" / "synthetic", splits=("train",))
    monkeypatch.chdir(tmp_path)
    for name in ("data/synthtic", str(tmp_path / "data" / "synthtic"), "./synthetic", "data/x/train.csv"):
        with pytest.raises(FileNotFoundError, match="no such local folder or file") as info:
            load_video_text_dataset(name)
        assert "Hub" not in str(info.value).split("(a Hub dataset id")[0], name
    with pytest.raises(FileNotFoundError, match=r"holds \['synthetic'\]"):
        load_video_text_dataset("data/synthtic")
