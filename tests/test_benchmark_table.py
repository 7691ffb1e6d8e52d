"""The results-table command end to end at a reduced size: a zero-shot row and a trained row, evaluated on test."""

import json

from benchmarks.run_table import main
from training.synthetic import DEFAULT_CLIP, write_benchmark


def test_run_table_trains_evaluates_and_writes_the_table(tmp_path):
    data = tmp_path / "data"
    write_benchmark(data, seed=1, num_train=8, num_validation=4, num_test=4, num_frames=8, size=64)
    out = tmp_path / "table"
    main(
        [
            "--dataset_name",
            str(data),
            "--model_name_or_path",
            str(DEFAULT_CLIP),
            "--output_dir",
            str(out),
            "--rows",
            "clip-meanP",
            "stop-paper",
            "--num_frames",
            "4",
            "--train_args",
            "--max_train_steps 2 --per_device_train_batch_size 4 --per_device_eval_batch_size 4",
        ]
    )
    table = (out / "table.md").read_text()
    assert "| clip-meanP |" in table and "| stop-paper |" in table and "pair acc" in table
    rows = json.loads((out / "table.json").read_text())["rows"]
    meanp, stop = rows["clip-meanP"]["runs"][0]["metrics"], rows["stop-paper"]["runs"][0]["metrics"]
    assert meanp["num_videos"] == stop["num_videos"] == 4
    assert 0 <= stop["t2v_R@1"] <= 100 and 1 <= stop["t2v_MdR"] <= 4 and 0 <= stop["pair_accuracy"] <= 1
    assert json.loads((out / "stop-paper-seed0" / "model" / "all_results.json").read_text())["train_steps"] == 2


def test_paired_differences_use_only_the_seeds_both_rows_ran():
    from benchmarks.run_table import paired_differences, paired_markdown

    def run(seed, r1, pair):
        return {"seed": seed, "metrics": {"t2v_R@1": r1, "v2t_R@1": r1, "pair_accuracy": pair}}

    reports = {
        "default": [run(0, 40.0, 0.8), run(1, 44.0, 0.9), run(2, 42.0, 0.7)],
        "clip-meanP": [run(0, 10.0, 0.5), run(1, 12.0, 0.5)],
    }
    paired = paired_differences(reports)
    assert set(paired) == {"clip-meanP"}
    mean, std, n = paired["clip-meanP"]["t2v_R@1"]
    assert (mean, std, n) == (-31.0, 1.0, 2)
    assert abs(paired["clip-meanP"]["pair_accuracy"][0] - (-0.35)) < 1e-12
    assert "| clip-meanP | 2 | -31.0 ± 1.0 |" in "\n".join(paired_markdown(paired))
    assert paired_differences({"clip-meanP": reports["clip-meanP"]}) == {}
    # against another reference row: the signs flip and the reference row is left out
    against_meanp = paired_differences(reports, "clip-meanP")
    assert set(against_meanp) == {"default"} and against_meanp["default"]["t2v_R@1"] == (31.0, 1.0, 2)
    assert "against `clip-meanP`" in "\n".join(paired_markdown(against_meanp, "clip-meanP"))


def test_finished_only_writes_the_table_of_the_finished_runs_with_each_rows_own_seeds(tmp_path):
    import pytest

    def finish(row, seed, r1, wall):
        folder = tmp_path / f"{row}-seed{seed}"
        folder.mkdir()
        metrics = {"t2v_R@1": r1, "v2t_R@1": r1 / 2, "pair_accuracy": 0.9}
        report = {"row": row, "seed": seed, "metrics": metrics, "row_wall_time_s": wall}
        (folder / "test_eval.json").write_text(json.dumps(report))

    finish("default", 0, 40.0, 60.0)
    finish("default", 1, 44.0, None)  # evaluated only: no training time on record
    finish("default-dgl-only", 0, 41.0, 120.0)
    (tmp_path / "default-dgl-only-seed1").mkdir()  # started, not finished: left out, nothing trained
    argv = ["--dataset_name", str(tmp_path / "absent"), "--output_dir", str(tmp_path), "--finished_only"]
    main([*argv, "--seeds", "0", "1", "--rows", "default", "default-dgl-only", "default-official"])
    table = (tmp_path / "table.md").read_text()
    assert "| row | seeds | T2V R@1 |" in table
    assert "| default | 0 1 | 42.0 ± 2.0 |" in table and "| default-dgl-only | 0 | 41.0 |" in table
    assert "default-official" not in table.split("Seeds:")[0]
    assert "| default-dgl-only | 1 | +1.0 ± 0.0 |" in table  # paired on seed 0, the only seed both ran
    assert "recorded wall times sum to 3.0 min" in table
    assert not (tmp_path / "default-dgl-only-seed1" / "model").exists()
    with pytest.raises(SystemExit, match="no finished run"):
        main([*argv, "--seeds", "2", "--rows", "default"])


def test_twin_cosine_pairs_the_clips_that_share_a_pair_id():
    import datasets
    import torch

    from training.evaluation import twin_cosine

    split = datasets.Dataset.from_dict({"pair_id": [7, 3, 7, 3, 9]})
    embeds = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    # rows 0/2 are orthogonal (cos 0), rows 1/3 point the same way (cos 1), row 4 has no twin
    assert twin_cosine(embeds, [0, 1, 2, 3, 4], split) == {"twin_cosine": 0.5}
    assert twin_cosine(embeds, [0, 1, 2, 3, 4], datasets.Dataset.from_dict({"x": [0] * 5})) == {}


def test_shared_head_stage_points_every_other_row_at_the_shared_rows_stage_one(tmp_path):
    import argparse

    import pytest

    from benchmarks.run_table import shared_head_stage_args

    args = argparse.Namespace(output_dir=str(tmp_path), shared_head_stage="default")
    assert shared_head_stage_args("default", 1, args) == []
    with pytest.raises(SystemExit, match="run the row default first"):
        shared_head_stage_args("default-dgl-only", 1, args)
    stage_one = tmp_path / "default-seed1" / "model" / "checkpoints"
    stage_one.mkdir(parents=True)
    (stage_one / "head_stage.safetensors").write_bytes(b"")
    assert shared_head_stage_args("default-dgl-only", 1, args) == ["--head_stage_from", str(stage_one.parent)]
    assert shared_head_stage_args("default-dgl-only", 1, argparse.Namespace(output_dir=str(tmp_path))) == []
