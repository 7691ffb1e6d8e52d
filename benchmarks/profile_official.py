"""Where the official STOP variant spends its time (torch.profiler, CPU), at CLIP ViT-B/32 geometry.

Profiles the video tower's eval forward (batch 1) and one training step (forward with the loss, backward, AdamW;
batch 4), float32 by default, and writes the top operators by self CPU time (also split by input shape, which
tells the pixel-space prompter convolutions [B, C, T, 224, 224] from the inter-frame ones [B, C, T, 49, 768]) plus
a per-module breakdown of the eval forward to a markdown file.

    python -m benchmarks.profile_official --output benchmarks/results/profile_official.md
    python -m benchmarks.profile_official --fast   # `official_fast` of benchmarks.speed: now the same model
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.speed import build_model, machine_info, make_inputs, make_step


def module_breakdown(model, pixels, repeats: int) -> list[tuple[str, float]]:
    """Forward wall time per top-level module of the official video tower (eval, inference mode)."""
    spent: dict[str, float] = {}
    starts: dict[str, float] = {}
    modules = {
        "spatial prompter (pixel Conv3d stack + region conv)": model.spatial_prompter,
        "temporal prompter (attention + inter-frame Conv3d)": model.temporal_prompter,
        "patch embedding + ln_pre": model.clip.vision_model.embeddings,
        "prompt generator": model.prompt_generator,
    }
    handles = []
    for name, module in modules.items():
        handles.append(
            module.register_forward_pre_hook(lambda m, a, n=name: starts.__setitem__(n, time.perf_counter()))
        )
        handles.append(
            module.register_forward_hook(
                lambda m, a, o, n=name: spent.__setitem__(n, spent.get(n, 0.0) + time.perf_counter() - starts[n])
            )
        )
    total = 0.0
    with torch.inference_mode():
        model.encode_video(pixels)  # warm-up
        spent.clear()
        for _ in range(repeats):
            start = time.perf_counter()
            model.encode_video(pixels)
            total += time.perf_counter() - start
    for h in handles:
        h.remove()
    rows = [(name, t / repeats) for name, t in spent.items()]
    rows.append(
        ("transformer layers with global-local attention, projection (rest)", (total - sum(spent.values())) / repeats)
    )
    rows.append(("total", total / repeats))
    return rows


def table(prof, group_by_input_shape: bool, rows: int) -> str:
    averages = prof.key_averages(group_by_input_shape=group_by_input_shape)
    total = sum(e.self_cpu_time_total for e in averages) or 1.0
    events = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    head = (
        "| op | input shapes | self CPU (s) | self CPU % | calls |"
        if group_by_input_shape
        else "| op | self CPU (s) | self CPU % | total CPU (s) | calls |"
    )
    lines = [head, "|---|---|---|---|---|"]
    for e in events:
        share = 100.0 * e.self_cpu_time_total / total
        if group_by_input_shape:
            shapes = ", ".join(str(s) for s in (e.input_shapes or []) if s)[:90] or "-"
            lines.append(f"| `{e.key}` | {shapes} | {e.self_cpu_time_total / 1e6:.3f} | {share:.1f} | {e.count} |")
        else:
            lines.append(
                f"| `{e.key}` | {e.self_cpu_time_total / 1e6:.3f} | {share:.1f} | {e.cpu_time_total / 1e6:.3f} | {e.count} |"
            )
    return "\n".join(lines)


def _spectral_conv3d(x, weight, bias, length: int):
    """A "same" stride-1 Conv3d with small temporal kernels: 2-D real FFTs of every frame (zero-padded to `length`),
    the temporal taps and channel mixing as one batched complex matmul per frequency, inverse FFT, crop."""
    import math

    import torch.nn.functional as F

    b, c, t, h, w = x.shape
    o, _, kt, kh, kw = weight.shape

    def dft(k, n):
        f = torch.arange(n, dtype=torch.float64)[:, None]
        j = torch.arange(k, dtype=torch.float64)[None] - k // 2
        return torch.polar(torch.ones(n, k, dtype=torch.float64), 2 * math.pi * f * j / length).to(torch.complex64)

    kernel = dft(kh, length) @ (weight.to(torch.complex64) @ dft(kw, length // 2 + 1).t())  # [O, C, kt, L, L/2+1]
    kernel = kernel.permute(3, 4, 0, 1, 2).reshape(-1, o, c * kt)
    spectrum = F.pad(torch.fft.rfft2(x, s=(length, length)), (0, 0, 0, 0, kt // 2, kt // 2))
    taps = spectrum.unfold(2, kt, 1).permute(3, 4, 1, 5, 0, 2).reshape(-1, c * kt, b * t)
    mixed = torch.bmm(kernel, taps).view(length, length // 2 + 1, o, b, t).permute(3, 2, 4, 0, 1)
    return torch.fft.irfft2(mixed, s=(length, length))[..., :h, :w] + bias.view(1, -1, 1, 1, 1)


def conv_probe(frames: int, repeats: int = 3) -> list[str]:
    """One pixel-prompter conv (9 -> 16 channels, kernel (3, 11, 11), [1, 9, T, 224, 224]): oneDNN direct in
    channels_last_3d against the FFT formulation above, forward and forward + backward (best of `repeats`)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(9, 16, (3, 11, 11), padding=(1, 5, 5))
    x = torch.randn(1, 9, frames, 224, 224)

    def best(fn):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    direct = lambda v: conv(v.contiguous(memory_format=torch.channels_last_3d))  # noqa: E731
    spectral = lambda v: _spectral_conv3d(v, conv.weight, conv.bias, 240)  # noqa: E731
    with torch.no_grad():
        error = (direct(x) - spectral(x)).abs().max().item()
        fwd = {name: best(lambda f=f: f(x)) for name, f in (("direct", direct), ("fft", spectral))}
    xg = x.clone().requires_grad_(True)
    both = {name: best(lambda f=f: f(xg).sum().backward()) for name, f in (("direct", direct), ("fft", spectral))}
    return [
        "",
        f"## One pixel-prompter conv (9 -> 16, (3, 11, 11), [1, 9, {frames}, 224, 224]): direct vs FFT",
        "",
        "| formulation | forward (s) | forward + backward (s) |",
        "|---|---|---|",
        f"| oneDNN direct, channels_last_3d | {fwd['direct']:.3f} | {both['direct']:.3f} |",
        f"| per-frame 2-D rFFT (240 x 240) + temporal taps by batched matmul | {fwd['fft']:.3f} | {both['fft']:.3f} |",
        "",
        f"max abs difference of the outputs: {error:.2e}; best of {repeats}, {torch.get_num_threads()} threads.",
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--eval_batch_size", type=int, default=1)
    parser.add_argument("--train_batch_size", type=int, default=4, help="0 skips the training step")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="profile `official_fast` of benchmarks.speed: the same model as without it (pixel prompter convs in "
        "channels_last_3d and inter-frame convs by FFT are the package default)",
    )
    parser.add_argument("--bf16", action="store_true", help="under torch.autocast('cpu', dtype=torch.bfloat16)")
    parser.add_argument(
        "--train_warmup",
        type=int,
        default=0,
        help="untimed training steps before the profiled one (a step takes minutes on CPU; its first-call "
        "overheads are negligible)",
    )
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument(
        "--conv_probe",
        action="store_true",
        help="also time one pixel-prompter conv directly and through FFTs (the alternative considered)",
    )
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--output", default="benchmarks/results/profile_official.md")
    args = parser.parse_args(argv)

    spec = dict(
        tiny=args.tiny,
        frames=args.frames if not args.tiny else 4,
        max_words=32 if not args.tiny else 8,
        device="cpu",
        seed=0,
    )
    name = "official_fast" if args.fast else "official"
    model = build_model(name, spec).eval()
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)  # noqa: E731
    command = "python -m benchmarks.profile_official " + " ".join(sys.argv[1:] if argv is None else argv)
    info = machine_info("cpu")
    out = [
        f"# Profile of the official STOP variant ({'bf16 autocast' if args.bf16 else 'float32'}"
        f"{', candidate fast convolutions' if args.fast else ''})",
        "",
        f"Command: `{command}`",
        "",
        f"{'tiny CLIP' if args.tiny else 'CLIP ViT-B/32 geometry'}, random weights, {spec['frames']} frames; {info['cpu_model']}, {info['torch_threads']} "
        f"threads, torch {info['torch']}, 1-min load average {info.get('loadavg_start', [float('nan')])[0]:.1f} at start (shared "
        "machine: absolute times are inflated, shares are what matter).",
    ]

    pixels, _ = make_inputs(spec, model, args.eval_batch_size)
    with autocast():
        breakdown = module_breakdown(model, pixels, repeats=2)
    out += [
        "",
        f"## Eval forward, batch {args.eval_batch_size}: time per module (wall, mean of 2 after warm-up)",
        "",
        "| module | seconds | share |",
        "|---|---|---|",
    ]
    total = breakdown[-1][1]
    out += [f"| {n} | {t:.3f} | {100 * t / total:.0f}% |" for n, t in breakdown]
    with torch.inference_mode(), autocast(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        model.encode_video(pixels)
    out += [
        "",
        f"## Eval forward, batch {args.eval_batch_size}: top ops by self CPU time",
        "",
        table(prof, False, args.rows),
        "",
        "By input shape:",
        "",
        table(prof, True, args.rows),
    ]
    print("\n".join(out), flush=True)

    if args.train_batch_size:
        pixels, ids = make_inputs(spec, model, args.train_batch_size)
        step = make_step(name, "train", model, pixels, ids, autocast, {})  # the step benchmarks.speed times
        start = time.perf_counter()
        for _ in range(args.train_warmup):
            step()
        warm = time.perf_counter() - start
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            start = time.perf_counter()
            step()
            profiled = time.perf_counter() - start
        section = [
            "",
            f"## Training step, batch {args.train_batch_size} (forward + backward + AdamW): top ops by self CPU time",
            "",
            f"{args.train_warmup} warm-up step(s) ({warm:.1f} s), profiled step {profiled:.1f} s (with profiler overhead).",
            "",
            table(prof, False, args.rows),
            "",
            "By input shape:",
            "",
            table(prof, True, args.rows),
        ]
        out += section
        print("\n".join(section), flush=True)

    if args.conv_probe and not args.tiny:
        section = conv_probe(args.frames)
        out += section
        print("\n".join(section), flush=True)

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
