import json

import pytest

from benchmarks import head_share, run_eval
from training.synthetic import write_benchmark

STOP_SYNTHETIC = "checkpoints/stop-synthetic"


@pytest.mark.slow
def test_head_share_at_scale_one_is_the_model_as_trained_and_zero_is_stops_own_feature(tmp_path):
    data = tmp_path / "data"
    write_benchmark(data, seed=3, num_train=0, num_validation=0, num_test=8, num_frames=8, size=64)
    out = tmp_path / "share.json"
    report = head_share.main(
        [
            "--model_name_or_path",
            STOP_SYNTHETIC,
            "--dataset_name",
            str(data),
            "--scales",
            "0",
            "1",
            "1000",
            "--split",
            "test",
            "--output_json",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == report
    trained = run_eval.main(["--model_name_or_path", STOP_SYNTHETIC, "--dataset_name", str(data), "--split", "test"])[
        "metrics"
    ]
    for key in ("t2v_R@1", "v2t_R@1", "pair_accuracy"):
        assert report["scales"]["1.0"][key] == pytest.approx(trained[key])
    assert report["head_to_own_norm_ratio"] > 1  # the committed default: the head carries most of the feature
    own, head = report["scales"]["0.0"], report["scales"]["1000.0"]
    assert own["twin_cosine"] > head["twin_cosine"]  # STOP's own feature alone tells the two orders apart less


def test_head_share_refuses_a_model_without_a_head(tmp_path):
    from tests.tiny import tiny_stop

    tiny_stop().save_pretrained(tmp_path / "m")
    with pytest.raises(SystemExit, match="not a STOP model with a temporal head"):
        head_share.main(["--model_name_or_path", str(tmp_path / "m"), "--dataset_name", str(tmp_path)])
