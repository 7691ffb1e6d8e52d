import json
import math
import shutil

import pytest
import torch

from benchmarks import head_after_prompts, run_eval
from modeling_stop import STOPModel, STOPProcessor
from training.synthetic import write_benchmark

BACKBONE = "checkpoints/clip-synthetic"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("head_after_prompts")
    write_benchmark(root / "data", seed=5, num_train=8, num_validation=4, num_test=4, num_frames=4, size=64)
    torch.manual_seed(0)
    STOPModel.from_clip(BACKBONE, variant="paper", num_frames=4, max_words=16).save_pretrained(root / "stop")
    STOPProcessor.from_clip(BACKBONE, num_frames=4, max_words=16).save_pretrained(root / "stop")
    return root


@pytest.mark.slow
def test_the_saved_model_embeds_as_the_cached_training_path_scored_it(world, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(world / "data", data)
    broken = sorted((data / "test").glob("*.mp4"))[0]
    broken.write_bytes(b"not a video")  # skipped and counted, in both paths
    out = tmp_path / "report.json"
    args = ["--model_name_or_path", str(world / "stop"), "--dataset_name", str(data)]
    report = head_after_prompts.main(
        args + ["--steps", "2", "--eval_every", "1", "--output_json", str(out), "--output_dir", str(tmp_path / "m")]
    )
    assert json.loads(out.read_text()) == report
    assert [r["step"] for r in report["validation"]] == [1, 2]
    assert all(math.isfinite(report["test"][k]) for k in head_after_prompts.KEYS)
    assert report["num_failed"] == {"train": 0, "validation": 0, "test": 1}
    saved = STOPModel.from_pretrained(tmp_path / "m")
    assert saved.temporal_head is not None and saved.config.temporal_head_input == "frozen"
    assert not any(p.requires_grad for p in saved.clip.parameters())  # the backbone stays frozen after loading
    metrics = run_eval.main(
        ["--model_name_or_path", str(tmp_path / "m"), "--dataset_name", str(data), "--split", "test"]
    )["metrics"]
    for key in ("t2v_R@1", "v2t_R@1", "pair_accuracy"):
        assert metrics[key] == pytest.approx(report["test"][key])
    # the head alone on the prompted frame features, the text side fixed
    other = head_after_prompts.main(
        args + ["--steps", "1", "--head_input", "prompted", "--form", "head", "--text", "fixed"]
    )
    assert other["args"]["head_input"] == "prompted" and math.isfinite(other["test"]["t2v_R@1"])


def test_refuses_a_model_with_a_head_and_a_head_form_it_cannot_save(world, tmp_path):
    with pytest.raises(SystemExit, match="not a STOP model without a temporal head"):
        head_after_prompts.main(["--model_name_or_path", "checkpoints/stop-synthetic", "--dataset_name", "x"])
    with pytest.raises(SystemExit, match="use --form sum"):
        head_after_prompts.main(
            ["--model_name_or_path", str(world / "stop"), "--dataset_name", "x", "--form", "head", "--output_dir", "o"]
        )
