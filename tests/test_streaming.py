"""Streaming training (`training/streaming.py`, `train.py --streaming`) from local WebDataset tar shards."""

import io
import json
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from tests.test_data import Processor, video_processor
from tests.test_train import (  # noqa: F401
    ENV,
    backbone,
    max_weight_difference,
    run,
    train_args,
    train_losses,
)
from tests.video_factory import moving_frames, write_video
from training.data import VideoTextCollator
from training.streaming import (
    StreamSampler,
    build_streaming_dataloader,
    load_streaming_dataset,
)

CAPTIONS = [
    "a red circle moving left",
    "a blue square moving right",
    "a green star falling",
    "a dot rising",
    "a yellow ring growing",
    "a purple box shrinking",
]


def write_shards(root, num_shards=2, per_shard=6, broken=(), split="train", size=32):
    """`root/{split}/shard-000N.tar`: samples `KEY.mp4` + `KEY.json` ({"caption"}); keys in `broken` get bytes that
    are not a video."""
    (root / split).mkdir(parents=True, exist_ok=True)
    scratch = root / "scratch.mp4"
    for shard in range(num_shards):
        with tarfile.open(root / split / f"shard-{shard:04d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{shard}{i:03d}"
                n = shard * per_shard + i
                if key in broken:
                    video = b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50
                else:
                    write_video(scratch, moving_frames(6, size, size, seed=n))
                    video = scratch.read_bytes()
                meta = json.dumps({"caption": f"{CAPTIONS[n % len(CAPTIONS)]} {n}"}).encode()
                for name, payload in ((f"{key}.mp4", video), (f"{key}.json", meta)):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    scratch.unlink(missing_ok=True)
    return root


def positions(sampler, epoch=0):
    sampler.set_epoch(epoch)
    return [position for position, _ in sampler]


def test_stream_order_is_seeded_per_epoch_split_across_processes_and_replayable(tmp_path):
    stream, evals = load_streaming_dataset(str(write_shards(tmp_path / "shards")))
    assert len(evals) == 0
    keys = {}
    for epoch in (0, 1):
        sampler = StreamSampler(stream, batch_size=2, seed=3, buffer_size=4)
        sampler.set_epoch(epoch)
        keys[epoch] = [row["__key__"] for _, row in sampler]
        assert sorted(keys[epoch]) == sorted(f"{s}{i:03d}" for s in range(2) for i in range(6))
        sampler.set_epoch(epoch)
        assert [row["__key__"] for _, row in sampler] == keys[epoch]  # deterministic
    assert keys[0] != keys[1]  # reshuffled per epoch

    # Two processes, batch 2: groups of 4 rows; 12 rows = 3 groups; each process takes its half of each group.
    ranks = [
        positions(StreamSampler(stream, 2, num_processes=2, process_index=r, seed=3, buffer_size=4)) for r in (0, 1)
    ]
    assert ranks == [[0, 1, 4, 5, 8, 9], [2, 3, 6, 7, 10, 11]]
    # Groups of 5 rows (batch 5, one process): the incomplete last group is dropped.
    assert positions(StreamSampler(stream, 5, seed=3, buffer_size=4)) == list(range(10))

    # Resume: skipping the first batch replays the stream and continues with the same rows.
    sampler = StreamSampler(stream, batch_size=2, seed=3, buffer_size=4)
    sampler.set_epoch(1)
    sampler.skip_batches = 2
    assert [row["__key__"] for _, row in sampler] == keys[1][4:]
    assert sampler.skip_batches == 0  # one pass only


def test_streamed_batches_decode_like_the_map_style_path_and_name_broken_samples(tmp_path):
    root = write_shards(tmp_path / "shards", num_shards=1, per_shard=4, broken={"0002"})
    stream, _ = load_streaming_dataset(str(root))
    dataset, loader = build_streaming_dataloader(
        stream, video_processor(), VideoTextCollator(Processor()), 2, seed=0, buffer_size=0
    )
    batches = list(loader)
    assert [b["indices"].tolist() for b in batches] == [[0, 1], [3]]
    assert len(batches[1]["failed"]) == 1 and "0002" in batches[1]["failed"][0]
    assert batches[0]["pixel_values"].shape == (2, 4, 3, 16, 16) and batches[0]["input_ids"].shape == (2, 16)
    # The same decoding and caption draw as the map-style dataset for the same (seed, epoch, position).
    position, row = next(iter(loader.sampler))
    item = dataset[(position, row)]
    assert item["caption"] == row["caption"] and item["pixel_values"].shape == (4, 3, 16, 16)


def test_a_streamed_row_with_an_empty_caption_names_the_shard_and_key(tmp_path):
    root = write_shards(tmp_path / "shards", num_shards=1, per_shard=2)
    with tarfile.open(root / "train" / "shard-0001.tar", "w") as tar:
        for name, payload in (("9000.mp4", b"x"), ("9000.json", json.dumps({"caption": ""}).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    stream, _ = load_streaming_dataset(str(root))
    with pytest.raises(ValueError, match=r"shard-0001\.tar 9000\) has an empty caption"):
        list(StreamSampler(stream, 1, buffer_size=0))


@pytest.mark.slow
def test_streamed_run_killed_with_sigkill_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(
    backbone,  # noqa: F811 (the imported fixture)
    tmp_path,
):
    # 12 rows (one undecodable) in 2 shards, batch 4: 3 steps per pass; 5 steps = killed in the second pass, after
    # step 4. Shuffled shards and buffer, random frame offsets, dropout, decoding in a worker process.
    data = write_shards(tmp_path / "shards", broken={"1002"})
    common = [
        "--streaming",
        "--shuffle_buffer_size",
        "5",
        "--per_device_train_batch_size",
        "4",
        "--max_train_steps",
        "5",
        "--variant",
        "paper",
        "--frame_sampling",
        "random",
        "--dataloader_num_workers",
        "1",
        "--checkpointing_steps",
        "1",
    ]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    result = run(train_args(backbone, data, straight, *common))
    assert "skipped 1 videos that failed to decode" in result.stdout and "1002" in result.stdout

    log = open(tmp_path / "killed.log", "w")
    process = subprocess.Popen(
        [sys.executable, *train_args(backbone, data, killed, *common)], env=ENV, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "step_4" / "training_state.json").exists():
        assert process.poll() is None and time.time() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "checkpoints" / "step_5").exists(), "the run ended before it could be killed"
    state = json.loads((killed / "checkpoints" / "step_4" / "training_state.json").read_text())
    assert (state["epoch"], state["batches_in_epoch"]) == (1, 1)  # mid second pass
    run(train_args(backbone, data, killed, *common, "--resume_from_checkpoint", "latest"))

    for weights in ("model.safetensors", "checkpoints/step_5/model.safetensors"):
        assert max_weight_difference(straight / weights, killed / weights) == 0.0, weights
    losses = train_losses(straight)
    assert [s for s, _ in losses] == [1, 2, 3, 4, 5] and losses[0][1] != losses[-1][1]
    assert train_losses(killed) == losses
