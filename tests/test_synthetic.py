import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from training.synthetic import (
    CLASS_NAMES,
    COLOURS,
    MOTIONS,
    POSITIONS,
    SHAPES,
    all_still_captions,
    describe_clip,
    render_clip,
    render_still,
    sample_clip_spec,
    sample_still,
    still_caption,
    write_benchmark,
)

TINY = dict(num_train=8, num_validation=4, num_test=4, num_frames=8, size=32)
COLUMNS = {"video", "caption", "captions", "label", "pair_id", "motion", "reversed"}


def _digest(directory):
    """Hash of every file (name and bytes) under a folder."""
    h = hashlib.sha256()
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(directory)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _frames(video):
    """All frames of a decoded `datasets.Video` value as uint8 [T, H, W, 3]."""
    batch = video.get_frames_in_range(0, video.metadata.num_frames)
    return batch.data.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory):
    directory = tmp_path_factory.mktemp("benchmark")
    counts = write_benchmark(directory, seed=0, **TINY)
    return directory, counts


@pytest.fixture(scope="module")
def tiny_dataset(tiny_benchmark):
    datasets = pytest.importorskip("datasets")
    return datasets.load_dataset("videofolder", data_dir=str(tiny_benchmark[0]))


def test_benchmark_round_trips_through_videofolder(tiny_benchmark, tiny_dataset):
    directory, counts = tiny_benchmark
    assert counts == {"train": 8, "validation": 4, "test": 4}
    assert set(tiny_dataset) == {"train", "validation", "test"}
    for split, ds in tiny_dataset.items():
        assert set(ds.column_names) == COLUMNS
        assert ds.num_rows == counts[split]
        assert all(
            (directory / split / row["file_name"]).exists()
            for row in map(json.loads, (directory / split / "metadata.jsonl").read_text().splitlines())
        )
    example = tiny_dataset["test"][0]
    frames = _frames(example["video"])
    assert frames.shape == (TINY["num_frames"], TINY["size"], TINY["size"], 3)
    assert isinstance(example["caption"], str) and example["captions"][0] == example["caption"]
    assert isinstance(example["reversed"], bool)


def test_every_clip_has_one_reversed_twin_with_another_caption_and_label(tiny_dataset):
    for ds in tiny_dataset.values():
        assert set(ds["label"]) <= set(CLASS_NAMES)
        assert set(ds["motion"]) <= set(MOTIONS)
        rows = ds.remove_columns("video").to_list()
        pairs = {}
        for row in rows:
            pairs.setdefault(row["pair_id"], []).append(row)
        assert len(pairs) == ds.num_rows // 2
        for a, b in pairs.values():
            assert {a["reversed"], b["reversed"]} == {False, True}
            assert a["motion"] == b["motion"]
            assert a["caption"] != b["caption"] and a["label"] != b["label"]


def test_reversed_twin_decodes_to_the_same_frames_backwards(tiny_dataset):
    ds = tiny_dataset["train"]
    by_pair = {}
    for i, pair_id in enumerate(ds["pair_id"]):
        by_pair.setdefault(pair_id, []).append(i)
    for i, j in by_pair.values():
        a = _frames(ds[i]["video"]).astype(np.int16)
        b = _frames(ds[j]["video"]).astype(np.int16)
        # Worst frame of each alignment: reversed, the twins differ by codec noise only (H.264 at crf 18) ...
        backwards = np.abs(a[::-1] - b).mean(axis=(1, 2, 3)).max()
        # ... in the same order, by the motion itself.
        forwards = np.abs(a - b).mean(axis=(1, 2, 3)).max()
        assert backwards < 2.5, backwards
        assert forwards > 2 * backwards + 1, (forwards, backwards)


def test_benchmark_is_deterministic_for_a_seed(tmp_path, tiny_benchmark):
    write_benchmark(tmp_path / "again", seed=0, **TINY)
    write_benchmark(tmp_path / "other", seed=1, **TINY)
    assert _digest(tmp_path / "again") == _digest(tiny_benchmark[0])
    assert _digest(tmp_path / "other") != _digest(tiny_benchmark[0])
    captions = lambda d: (d / "train" / "metadata.jsonl").read_text()  # noqa: E731
    assert captions(tmp_path / "other") != captions(tiny_benchmark[0])


def test_write_benchmark_rejects_odd_sizes_and_clip_counts(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_benchmark(tmp_path, num_train=3, num_validation=0, num_test=0)
    with pytest.raises(ValueError, match="even"):
        write_benchmark(tmp_path, num_train=2, num_validation=0, num_test=0, size=33)


@pytest.mark.parametrize("motion", MOTIONS)
def test_rendering_a_reversed_spec_plays_the_clip_backwards(motion):
    spec = sample_clip_spec(np.random.default_rng(7), motion)
    frames = render_clip(spec, size=32, num_frames=8).astype(np.int16)
    backwards = render_clip(spec.reversed(), size=32, num_frames=8).astype(np.int16)
    assert np.abs(frames[::-1] - backwards).max() <= 1
    assert np.abs(frames[0] - frames[-1]).mean() > 1  # something happens
    (label, captions), (twin_label, twin_captions) = describe_clip(spec), describe_clip(spec.reversed())
    assert label != twin_label and {label, twin_label} <= set(CLASS_NAMES)
    assert captions[0] != twin_captions[0]
    subject = spec.subjects[0]
    assert subject.shape in captions[0] and subject.colour in captions[0]


def test_both_directions_of_every_motion_are_sampled():
    rng = np.random.default_rng(0)
    labels = {describe_clip(sample_clip_spec(rng, motion))[0] for motion in MOTIONS for _ in range(40)}
    assert labels == set(CLASS_NAMES)


def test_stills_and_their_captions():
    rng = np.random.default_rng(0)
    spec = sample_still(rng)
    image = render_still(spec, size=64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert still_caption(spec) == f"a {spec.size} {spec.colour} {spec.shape} {POSITIONS[spec.position][1]}"
    x, y = (int(c * 64) for c in spec.centre)
    assert np.abs(image[y, x].astype(int) - COLOURS[spec.colour]).max() <= 1  # every shape covers its centre
    captions = all_still_captions()
    assert len(captions) == len({c for c, _ in captions}) == 720
    assert captions[0][0] == f"a small red {SHAPES[0]} in the top left corner"
    # Resolution independent: a 128 px still box-filtered to 64 px is close to the 64 px still.
    big = render_still(spec, size=128).reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
    assert np.abs(big - image).mean() < 3
