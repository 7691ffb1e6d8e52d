"""The speed benchmark's tiny mode runs end to end and writes a complete, self-consistent report."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT

MODELS = ("backbone", "official", "paper")
DTYPES = ("float32", "bf16")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    output = tmp_path_factory.mktemp("speed") / "speed.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.speed", "--tiny", "--output", str(output)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert output.with_suffix(".md").exists()
    return json.loads(output.read_text()), output.with_suffix(".md").read_text()


def test_every_configuration_is_measured(report):
    data, _ = report
    settings = data["settings"]
    found = {(r["stage"], r["model"], r["batch_size"], r["dtype"]): r for r in data["results"]}
    expected = [("eval", m, b, d) for m in MODELS for b in settings["batch_sizes"] for d in DTYPES]
    expected += [("train", m, settings["train_batch_size"], d) for m in MODELS for d in DTYPES]
    assert sorted(found) == sorted(expected)
    for key, r in found.items():
        assert "error" not in r, (key, r.get("error"))
        assert r["repeats"] >= 1 and len(r["times_s"]) == r["repeats"]
        assert all(t > 0 for t in r["times_s"]) and r["median_s"] > 0
        assert r["peak_delta_mib"] >= 0
        assert (r["trainable_params"] == 0) == (r["model"] == "backbone")


def test_ratios_are_time_over_backbone_time(report):
    data, _ = report
    backbone = {
        (r["stage"], r["batch_size"], r["dtype"]): r["median_s"] for r in data["results"] if r["model"] == "backbone"
    }
    for r in data["results"]:
        ref = backbone[(r["stage"], r["batch_size"], r["dtype"])]
        assert r["backbone_median_s"] == ref
        assert math.isclose(r["ratio_to_backbone"], r["median_s"] / ref, rel_tol=1e-12)
        if r["model"] == "backbone":
            assert r["ratio_to_backbone"] == 1.0


def test_bf16_deviation_machine_and_table(report):
    data, table = report
    rows = {(d["model"], d["batch_size"]): d for d in data["bf16_deviation"]}
    assert sorted(rows) == sorted((m, b) for m in MODELS for b in data["settings"]["batch_sizes"])
    for d in rows.values():
        assert 0.9 < d["min_cosine"] <= 1.0 + 1e-6 and 0 <= d["max_abs_diff"] < 0.5
    assert 0 <= rows[("official", 1)]["spatial_mask_agreement"] <= 1
    assert "inserted_tokens_agreement" in rows[("paper", 1)]
    machine = data["machine"]
    for key in ("torch", "torch_threads", "cpu_model", "device"):
        assert key in machine
    assert machine["device"] == "cpu"
    assert {t["name"] for t in data["targets"]} and all("limit" in t for t in data["targets"])
    for r in data["results"]:
        assert r["paired_ratio"] > 0 and len(r["paired_ratios"]) >= 1
    assert "| eval | official | 1 | float32 |" in table and "| train | paper |" in table


def test_throughput_benchmark_accounts_for_the_whole_loop(tmp_path):
    from benchmarks.throughput import main as throughput

    videos = tmp_path / "videos"
    videos.mkdir()
    from tests.video_factory import moving_frames, write_video

    for i in range(2):
        write_video(videos / f"v{i}.mp4", moving_frames(8, 48, 64, seed=i))
    result = throughput(
        [
            "--tiny",
            "--video_dir",
            str(videos),
            "--num_videos",
            "4",
            "--batch_size",
            "2",
            "--num_workers",
            "1",
            "--output",
            str(tmp_path / "t.json"),
        ]
    )
    assert json.loads((tmp_path / "t.json").read_text())["videos"] == result["videos"] == 4
    main, shares = result["main_process"], result["shares_of_work"]
    assert 0 < main["dataloader_wait_share"] < 1 and 0 < main["model_share"] < 1
    assert abs(main["dataloader_wait_share"] + main["model_share"] + main["other_share"] - 1) < 0.01
    assert math.isclose(result["videos_per_s"], 4 / result["wall_s"], rel_tol=0.02)
    assert abs(sum(shares.values()) - 1) < 1e-3 and shares["decoding"] > 0 and shares["preprocessing"] > 0
    assert [row["video"] for row in result["decode_profile"]] == ["v0.mp4", "v1.mp4"]
    assert result["settings"]["distinct_videos"] == 2 and result["failed"] == []
    assert result["target"]["met"] == (main["dataloader_wait_share"] < 0.2)


def test_throughput_pipeline_gives_the_processors_pixels(tmp_path):
    from datasets import Dataset

    from benchmarks.throughput import TimedVideoDataset, TimedVideoProcessor
    from modeling_stop import STOPVideoProcessor
    from tests.video_factory import moving_frames, write_video

    write_video(tmp_path / "v.mp4", moving_frames(8, 48, 64, seed=3))
    timed = TimedVideoDataset(
        Dataset.from_dict({"video": [str(tmp_path / "v.mp4")]}),
        TimedVideoProcessor(num_frames=4, size=32),
        caption_column=None,
    )
    item = timed[0]
    expected = STOPVideoProcessor(num_frames=4, size=32)(str(tmp_path / "v.mp4"))["pixel_values"][0]
    assert torch.equal(item["pixel_values"], expected)
    decode, preprocess = item["timing"]
    assert decode > 0 and preprocess > 0
