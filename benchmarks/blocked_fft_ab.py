"""The official variant's eval forward with its FFT convolutions blocked or not, alternating in one process.

    python -m benchmarks.blocked_fft_ab --rounds 8 --output benchmarks/results/blocked_fft_ab_cpu.json

CLIP ViT-B/32 geometry, random weights, 12 frames, batch 1, fp32, inference mode. Per round: the official forward
with `prompting_official._BLOCKED = False` (`PlaneFFTConv3d`'s single FFT and matmul calls over the whole stack in
its reused buffers, `FFTConv3d`'s single FFT calls on fresh tensors: the package before the change), then with
`_BLOCKED = True` (the default: one frame's planes or one channel's volume per FFT call, the temporal taps per block
of frequencies, `FFTConv3d` in reused buffers too), then the frozen vision tower; medians, the ratios to the vision
tower, the spatial and temporal prompters' own times, and whether both give the same output bit for bit.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from statistics import median_high as median


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    import torch

    import modeling_stop.prompting_official as prompting
    from benchmarks.speed import build_model

    torch.set_num_threads(args.threads)
    model = build_model("official", dict(tiny=False, seed=0, frames=12, max_words=32, device="cpu")).eval()
    pixels = torch.randn(1, 12, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    variants = {"single_calls": False, "blocked": True}
    times = {name: [] for name in (*variants, "backbone")}
    prompter_times = {name: [] for name in variants}
    temporal_times = {name: [] for name in variants}
    tokens = torch.randn(1, 12, 50, 768, generator=torch.Generator().manual_seed(2))
    outputs = {}
    default = prompting._BLOCKED
    try:
        with torch.inference_mode():
            for name, blocked in variants.items():  # warm-up, and the outputs to compare
                prompting._BLOCKED = blocked
                outputs[name] = model.get_video_features(pixel_values=pixels).clone()
            model.clip.get_image_features(pixel_values=pixels[0])
            for _ in range(args.rounds):
                for name, blocked in variants.items():
                    prompting._BLOCKED = blocked
                    start = time.perf_counter()
                    model.get_video_features(pixel_values=pixels)
                    times[name].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    model.spatial_prompter(pixels)
                    prompter_times[name].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    model.temporal_prompter(tokens, None)
                    temporal_times[name].append(time.perf_counter() - start)
                start = time.perf_counter()
                model.clip.get_image_features(pixel_values=pixels[0])
                times["backbone"].append(time.perf_counter() - start)
    finally:
        prompting._BLOCKED = default

    result = {
        "command": " ".join(["python -m benchmarks.blocked_fft_ab", *(sys.argv[1:] if argv is None else argv)]),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "seconds": times,
        "spatial_prompter_seconds": prompter_times,
        "temporal_prompter_seconds": temporal_times,
        "median_seconds": {k: median(v) for k, v in times.items()},
        "median_spatial_prompter_seconds": {k: median(v) for k, v in prompter_times.items()},
        "median_temporal_prompter_seconds": {k: median(v) for k, v in temporal_times.items()},
        "ratio_to_backbone": {k: median(times[k]) / median(times["backbone"]) for k in variants},
        "paired_ratio_to_backbone": {k: median([m / b for m, b in zip(times[k], times["backbone"])]) for k in variants},
        "rounds_blocked_faster": sum(b < s for b, s in zip(times["blocked"], times["single_calls"])),
        "bit_identical": bool(torch.equal(outputs["blocked"], outputs["single_calls"])),
    }
    keys = (
        "median_seconds",
        "median_spatial_prompter_seconds",
        "median_temporal_prompter_seconds",
        "ratio_to_backbone",
        "paired_ratio_to_backbone",
        "rounds_blocked_faster",
        "bit_identical",
    )
    print(json.dumps({k: result[k] for k in keys}, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
