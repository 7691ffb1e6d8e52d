"""Eval forward of the official variant against the frozen vision tower (and the authors' formulation), each model in
its own fresh process, the processes alternating: the way the speed target is checked from outside.

    python -m benchmarks.separate_processes --models vision_tower official official_authors --rounds 5 --forwards 1 \
        --output benchmarks/results/separate_processes_zen5.json

CLIP ViT-B/32 geometry with random weights (the same seed for every model: identical CLIP weights; the cost does not
depend on the values), 12 frames of 224 px, batch 1, fp32, inference mode. Per round every model runs in a new
Python process: build, one untimed warm-up forward, then `--forwards` timed forwards, whose median is the process's
time. `vision_tower` times `model.clip.get_image_features` over the 12 frames; `official` the official variant's
`get_video_features`; `official_authors` the same model computed as the authors' released code computes it
(`benchmarks.speed.use_authors_official_convs`), with the frozen linears through `F.linear` as in their code
(`STOP_CPU_LINEAR` does not apply to it). The order of the models rotates every round. Reported: per round the
ratio of each model's time to that round's vision tower, and the median of those ratios over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from statistics import median

from benchmarks.cpu_linear_backends import cpu_flags

VISION_TOWER = "vision_tower"
CHOICES = (VISION_TOWER, "official", "official_authors")


def child(name: str, forwards: int, threads: int) -> dict:
    import torch

    from benchmarks.speed import build_model

    torch.set_num_threads(threads)
    if name == "official_authors":  # the authors' code runs every linear through torch's default GEMM
        import modeling_stop.prompting_paper as paper

        paper.CPU_LINEAR_BACKEND = "mkl"
    model = build_model("official_authors" if name == "official_authors" else "official", _SPEC).eval()
    pixels = torch.randn(1, 12, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    if name == VISION_TOWER:

        def forward():
            return model.clip.get_image_features(pixel_values=pixels[0])
    else:

        def forward():
            return model.get_video_features(pixel_values=pixels)

    times = []
    with torch.inference_mode():
        forward()  # warm-up: kernel spectra, FFT plans, reused buffers
        for _ in range(forwards):
            start = time.perf_counter()
            forward()
            times.append(time.perf_counter() - start)
    return {"model": name, "seconds": times, "median_seconds": median(times)}


_SPEC = dict(tiny=False, seed=0, frames=12, max_words=32, device="cpu")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[VISION_TOWER, "official"], choices=CHOICES)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--forwards", type=int, default=3, help="timed forwards per process (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None)
    parser.add_argument("--child", default=None, choices=CHOICES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.forwards, args.threads)))
        return
    if VISION_TOWER not in args.models:
        parser.error(f"--models needs {VISION_TOWER} (the ratios are to it)")

    rounds = []
    for r in range(args.rounds):
        order = args.models[r % len(args.models) :] + args.models[: r % len(args.models)]
        times = {}
        for name in order:
            command = [sys.executable, "-m", "benchmarks.separate_processes", "--child", name]
            command += ["--forwards", str(args.forwards), "--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ.copy())
            times[name] = json.loads(done.stdout.strip().splitlines()[-1])["median_seconds"]
        ratios = {k: times[k] / times[VISION_TOWER] for k in args.models if k != VISION_TOWER}
        rounds.append(
            {"order": order, "median_seconds": times, "ratio_to_vision_tower": ratios, "loadavg": os.getloadavg()}
        )
        print(
            f"round {r}: "
            + ", ".join(f"{k} {v:.3f} s" for k, v in times.items())
            + " | "
            + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()),
            flush=True,
        )

    others = [k for k in args.models if k != VISION_TOWER]
    summary = {k: median([r["ratio_to_vision_tower"][k] for r in rounds]) for k in others}
    spread = {
        k: [min(r["ratio_to_vision_tower"][k] for r in rounds), max(r["ratio_to_vision_tower"][k] for r in rounds)]
        for k in others
    }
    result = {
        "command": " ".join(["python -m benchmarks.separate_processes", *(sys.argv[1:] if argv is None else argv)]),
        "cpu": cpu_flags()["model"] or platform.machine(),
        "threads": args.threads,
        "forwards_per_process": args.forwards,
        "rounds": rounds,
        "median_ratio_to_vision_tower": summary,
        "ratio_range": spread,
    }
    if "official_authors" in summary and "official" in summary:
        result["official_speedup_over_authors"] = median(
            [r["ratio_to_vision_tower"]["official_authors"] / r["ratio_to_vision_tower"]["official"] for r in rounds]
        )
    print(json.dumps({k: v for k, v in result.items() if k not in ("rounds",)}, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
