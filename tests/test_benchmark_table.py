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
