"""The frozen CLIP linears' GEMM on CPU through torch's default (`F.linear`: MKL sgemm) and through oneDNN
(`torch.ops.mkldnn._linear_pointwise`, what `modeling_stop.prompting_paper.frozen_linear` calls), float32, outside
autograd, alternating per repeat; and the whole official eval forward with either backend.

    python -m benchmarks.cpu_linear_backends --output benchmarks/results/cpu_linear_backends.json

Shapes: ViT-B/32 with 12 frames (600 frame tokens; 648 with the official variant's 4 local prompts a frame): the
q/k/v/out projections [M, 768] @ [768, 768], fc1 [600, 768] @ [768, 3072], fc2 [600, 3072] @ [3072, 768]. The
forward comparison runs the official variant's `get_video_features` once per backend per round, in one process
(`prompting_paper.CPU_LINEAR_BACKEND` switched between calls), with the frozen vision tower
(`model.clip.get_image_features`, always `F.linear`) timed after each pair.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from statistics import median_high as median


def cpu_flags() -> dict:
    info = {"model": None, "vendor": None, "avx512f": False}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read(1 << 16)
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and info["model"] is None:
            info["model"] = value
        if key == "vendor_id" and info["vendor"] is None:
            info["vendor"] = value
        if key == "flags":
            info["avx512f"] = "avx512f" in value.split()
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5, help="official forwards per backend")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    import modeling_stop.prompting_paper as paper
    from benchmarks.speed import build_model

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    shapes = {"qkv/out (official, 648 rows)": (648, 768, 768), "qkv/out": (600, 768, 768)}
    shapes.update({"fc1": (600, 768, 3072), "fc2": (600, 3072, 768)})
    gemms = {}
    model = build_model("official", dict(tiny=False, seed=0, frames=12, max_words=32, device="cpu")).eval()
    pixels = torch.randn(1, 12, 3, 224, 224, generator=gen)
    with torch.inference_mode():
        for name, (m, k, n) in shapes.items():
            x, w, b = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
            calls = {
                "mkl": lambda x=x, w=w, b=b: F.linear(x, w, b),
                "onednn": lambda x=x, w=w, b=b: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""),
            }
            times = {key: [] for key in calls}
            for call in calls.values():
                call()
            for _ in range(args.repeats):
                for key, call in calls.items():
                    start = time.perf_counter()
                    call()
                    times[key].append(time.perf_counter() - start)
            diff = (calls["onednn"]() - calls["mkl"]()).abs().max().item()
            scale = calls["mkl"]().abs().max().item()
            flop = 2 * m * k * n
            gemms[name] = {
                "shape": [m, k, n],
                "median_ms": {key: 1000 * median(v) for key, v in times.items()},
                "gflops": {key: flop / median(v) / 1e9 for key, v in times.items()},
                "max_abs_difference": diff,
                "max_abs_value": scale,
            }
            print(name, {key: round(v, 1) for key, v in gemms[name]["gflops"].items()}, "GFLOP/s", flush=True)

        forward = {key: [] for key in ("mkl", "onednn", "vision_tower")}
        features = {}
        default = paper.CPU_LINEAR_BACKEND
        try:
            for key in ("mkl", "onednn"):
                paper.CPU_LINEAR_BACKEND = key
                features[key] = model.get_video_features(pixel_values=pixels)
            model.clip.get_image_features(pixel_values=pixels[0])
            for _ in range(args.rounds):
                for key in ("mkl", "onednn"):
                    paper.CPU_LINEAR_BACKEND = key
                    start = time.perf_counter()
                    model.get_video_features(pixel_values=pixels)
                    forward[key].append(time.perf_counter() - start)
                start = time.perf_counter()
                model.clip.get_image_features(pixel_values=pixels[0])
                forward["vision_tower"].append(time.perf_counter() - start)
        finally:
            paper.CPU_LINEAR_BACKEND = default
        cosine = F.cosine_similarity(features["mkl"], features["onednn"], dim=-1).min().item()
    result = {
        "command": " ".join(["python -m benchmarks.cpu_linear_backends", *(sys.argv[1:] if argv is None else argv)]),
        "cpu": cpu_flags(),
        "torch": torch.__version__,
        "threads": args.threads,
        "default_backend_here": default,
        "gemms": gemms,
        "official_eval_seconds": forward,
        "official_eval_median_seconds": {k: median(v) for k, v in forward.items()},
        "official_eval_ratio_to_vision_tower": {
            k: median([a / b for a, b in zip(forward[k], forward["vision_tower"])]) for k in ("mkl", "onednn")
        },
        "official_video_features_min_cosine_mkl_vs_onednn": cosine,
        "official_video_features_max_abs_difference": (features["mkl"] - features["onednn"]).abs().max().item(),
    }
    print(json.dumps({k: v for k, v in result.items() if k not in ("gemms", "official_eval_seconds")}, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
