"""The official variant's eval forward with and without the reused FFT buffers, alternating in one process.

    python -m benchmarks.reused_buffers_ab --rounds 8 --output benchmarks/results/reused_buffers_ab_cpu.json

CLIP ViT-B/32 geometry, random weights, 12 frames, batch 1, fp32, inference mode. Per round: the official forward
with its buffers allocated afresh (`reused_buffers` replaced by a no-op context), then with them reused, then the
frozen vision tower; medians, minor page faults per forward (`getrusage`), and the ratios to the vision tower.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import sys
import time


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    import torch

    import modeling_stop.modeling_stop as stop_module
    from benchmarks.speed import build_model

    torch.set_num_threads(args.threads)
    model = build_model("official", dict(tiny=False, seed=0, frames=12, max_words=32, device="cpu")).eval()
    pixels = torch.randn(1, 12, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    reused = stop_module.reused_buffers
    contexts = {"allocated": contextlib.nullcontext, "reused": reused}
    times = {"allocated": [], "reused": [], "backbone": []}
    faults = {"allocated": [], "reused": []}
    try:
        with torch.inference_mode():
            model.get_video_features(pixel_values=pixels)
            model.clip.get_image_features(pixel_values=pixels[0])
            for _ in range(args.rounds):
                for name, context in contexts.items():
                    stop_module.reused_buffers = context
                    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    start = time.perf_counter()
                    model.get_video_features(pixel_values=pixels)
                    times[name].append(time.perf_counter() - start)
                    faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
                start = time.perf_counter()
                model.clip.get_image_features(pixel_values=pixels[0])
                times["backbone"].append(time.perf_counter() - start)
    finally:
        stop_module.reused_buffers = reused

    def median(values):
        return sorted(values)[len(values) // 2]

    result = {
        "command": " ".join(["python -m benchmarks.reused_buffers_ab", *(sys.argv[1:] if argv is None else argv)]),
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "seconds": times,
        "median_seconds": {k: median(v) for k, v in times.items()},
        "median_minor_faults": {k: median(v) for k, v in faults.items()},
        "ratio_to_backbone": {k: median(times[k]) / median(times["backbone"]) for k in contexts},
        "rounds_reused_faster": sum(r < a for r, a in zip(times["reused"], times["allocated"])),
    }
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("median_seconds", "median_minor_faults", "ratio_to_backbone", "rounds_reused_faster")
            },
            indent=1,
        )
    )
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
