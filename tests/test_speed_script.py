"""The speed benchmark's tiny mode runs end to end and writes a complete, self-consistent report."""

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

MODELS = ("backbone", "official", "paper")
DTYPES = ("float32", "bf16")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    output = tmp_path_factory.mktemp("speed") / "speed.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.speed", "--tiny", "--output", str(output)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
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
    backbone = {(r["stage"], r["batch_size"], r["dtype"]): r["median_s"] for r in data["results"] if r["model"] == "backbone"}
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
