"""Speed and memory of STOP against its frozen CLIP backbone, float32 and bf16 autocast.

One run measures, at CLIP ViT-B/32 geometry with random weights (the timings do not depend on the weights):

- eval: the video tower's forward (`torch.inference_mode`) of the frozen backbone (per-frame CLIP image features,
  mean pooling), STOP `variant="official"` and STOP `variant="paper"`, at every `--batch_sizes`;
- train: one training step of each STOP variant (forward with `return_loss=True` over `--train_batch_size` videos
  and as many texts, backward, AdamW step over the trainable parameters) next to the backbone's forward + backward
  to the pixels (`pixel_values.requires_grad_(True)`, loss = sum of the frozen per-frame image features: the cost
  of back-propagating through the frozen ViT);
- each in float32 and under bf16 autocast (`torch.autocast(device, dtype=torch.bfloat16)`);
- the deviation of the video embeddings between float32 and bf16 autocast for every model.

The models of one (stage, batch, dtype) run in one fresh subprocess, in interleaved rounds (backbone, official,
paper, ...), so that every STOP sample is bracketed by backbone samples taken just before and after it. On a shared
machine whose load drifts, the *paired ratio* (median over samples of STOP time / mean of the bracketing backbone
times) is the robust number; the *ratio of medians* (median time / backbone median time) is reported too. Train
ratios are STOP step / backbone forward + backward. Round 0 is a warm-up; a step so slow that its warm-up exceeds
`--slow_seconds` keeps that single step as its sample (its first-call overheads are negligible). Peak memory: the
growth of the resident set's high-water mark over one step (`VmHWM`, reset through /proc/self/clear_refs before
every step, freed heap trimmed) on CPU, `torch.cuda.max_memory_allocated` growth on CUDA. The JSON records the
machine and its load average.

Cost of the default run on a 2-core CPU: an estimated 5-6 minutes when idle, 15 minutes and more when other
processes share the cores (the official training step alone takes about one minute idle, three under load, per dtype).
`--models ... official_authors` adds the official variant computed as the authors' code computes it
(`use_authors_official_convs`).

    python -m benchmarks.speed                       # full run, writes benchmarks/results/speed_cpu.json + .md
    python -m benchmarks.speed --device cuda --output benchmarks/results/speed_cuda.json
    python -m benchmarks.speed --tiny --output /tmp/speed.json   # seconds: a tiny CLIP, for tests
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BACKBONE = "backbone"
MODELS = {
    # per-frame frozen CLIP + mean pooling: no prompt module at all
    BACKBONE: dict(use_dgl_prompts=False, use_spatial_prompt=False, use_temporal_prompt=False),
    "official": dict(variant="official"),
    "paper": dict(variant="paper"),
    # the paper variant's first layout (prompting once on the ln_pre tokens, pooled-frame prompter) and the cost of
    # each mechanism of the current one, each switched off alone
    "paper_v1": dict(variant="paper", paper_version=1),
    "paper_layer0": dict(variant="paper", paper_prompt_layers=[0]),
    "paper_first_regions": dict(variant="paper", paper_region_source="first"),
    "paper_frames_prompter": dict(variant="paper", paper_temporal_prompter="frames"),
    "paper_no_neighbours": dict(variant="paper", paper_neighbour_attention=False),
    "paper_no_identity": dict(variant="paper", paper_frame_identity=False),
    "paper_no_spatial": dict(variant="paper", use_spatial_prompt=False),
    "paper_no_temporal": dict(variant="paper", use_temporal_prompt=False),
    "paper_dgl_only": dict(variant="paper", use_spatial_prompt=False, use_temporal_prompt=False),
    # the official variant as built (its channels_last_3d and FFT convolutions are the package default); the name of
    # the candidate speed-up that became that default, kept so that earlier commands and result files stay valid
    "official_fast": dict(variant="official"),
    # the official variant computed as the authors' code does (`use_authors_official_convs`): the reference cost
    "official_authors": dict(variant="official"),
}
DEFAULT_MODELS = [BACKBONE, "official", "paper"]
# --tiny: small prompter kernels and top-k for the tiny CLIP (4 frames, 32 px).
TINY_PROMPTERS = dict(
    inter_kernel=(3, 5, 7),
    prompter_kernel=(3, 3, 3),
    region_kernel=(3, 3, 3),
    frame_weight_kernel=(3, 3, 3),
    spatial_top_k=3,
)
DTYPES = ("float32", "bf16")
TARGETS = [
    # (name, stage, model, batch, dtype, limit): ratios to the backbone, from the project's issues
    ("paper eval forward / backbone (batch 1, fp32)", "eval", "paper", 1, "float32", 1.4),
    ("paper train step / backbone fwd+bwd (batch 4, fp32)", "train", "paper", 4, "float32", 2.0),
    ("official eval forward / backbone (batch 1, fp32)", "eval", "official", 1, "float32", 1.6),
    ("official train step / backbone fwd+bwd (batch 4, fp32)", "train", "official", 4, "float32", 3.0),
]
# (name, stage, model, reference model, batch, dtype, least speed-up): paired ratio of the reference / of the model
SPEEDUP_TARGETS = [
    (
        "official eval forward speed-up over the authors' formulation (batch 1, fp32)",
        "eval",
        "official",
        "official_authors",
        1,
        "float32",
        2.0,
    ),
    (
        "official train step speed-up over the authors' formulation (batch 4, fp32)",
        "train",
        "official",
        "official_authors",
        4,
        "float32",
        None,
    ),
]
# The authors' code on the same kind of machine (docs/ENVIRONMENT.md): eval 1.7 s / video, train step 54 s / 4 videos.
AUTHORS_RATIOS = {
    "official eval forward / backbone (batch 1, fp32)": 3.1,
    "official train step / backbone fwd+bwd (batch 4, fp32)": 10.6,
}


# ------------------------------------------------------------------------------------------------ model and data
def clip_geometry(tiny: bool) -> dict:
    from transformers import CLIPConfig

    if not tiny:
        config = CLIPConfig()  # the defaults are CLIP ViT-B/32: vision 768 x 12 layers, patch 32, 224 px; text 512
    else:
        config = CLIPConfig(
            text_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                vocab_size=100,
                max_position_embeddings=40,
                bos_token_id=98,
                eos_token_id=99,
                pad_token_id=0,
            ),
            vision_config=dict(
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=32,
                patch_size=8,
            ),
            projection_dim=16,
        )
    return dict(
        text_config=config.text_config.to_dict(),
        vision_config=config.vision_config.to_dict(),
        projection_dim=config.projection_dim,
    )


def build_model(name: str, spec: dict):
    import torch

    from modeling_stop import STOPConfig, STOPModel

    geometry = clip_geometry(spec["tiny"])
    stop_kwargs = dict(MODELS[name], **(TINY_PROMPTERS if spec["tiny"] else {}))
    torch.manual_seed(spec["seed"])  # same CLIP weights for every model
    config = STOPConfig(**geometry, num_frames=spec["frames"], max_words=spec["max_words"], **stop_kwargs)
    model = STOPModel(config)
    if name == "official_authors":
        use_authors_official_convs(model)
    return model.to(spec["device"])


# ---------------------------------------------------------------------------------------- the official convolutions
FAST_NOTE = (
    "official_fast = the official variant as the package builds it (the same model as official): its pixel-space "
    "prompter's Conv3d stack runs in channels_last_3d memory format and its inter-frame prompt's Conv3d modules run "
    "through FFTs by default (same parameters; outputs equal the direct convolutions up to float rounding)."
)


AUTHORS_NOTE = (
    "official_authors = the official variant computed as the authors' released code computes it "
    "(benchmarks.speed.use_authors_official_convs): every Conv3d of the pixel-space prompter, its region-score conv "
    "and the inter-frame prompt run directly in the default NCDHW layout at full resolution. Same parameters and "
    "outputs (up to float rounding): it is the reference for the speed-up over the authors' formulation."
)


def official_prompters(model) -> tuple:
    """`(spatial, temporal)`: the model's prompters of the released formulation (pixel-space spatial prompter,
    convolutional inter-frame prompt), None where the model has another kind or none."""
    from modeling_stop.modeling_stop import STOPOfficialSpatialPrompter, STOPOfficialTemporalPrompter

    spatial, temporal = model.spatial_prompter, model.temporal_prompter
    return (
        spatial if isinstance(spatial, STOPOfficialSpatialPrompter) else None,
        temporal if isinstance(temporal, STOPOfficialTemporalPrompter) else None,
    )


def use_authors_official_convs(model):
    """The official prompters' convolutions as the authors' code runs them, applied to one model instance: direct
    NCDHW Conv3d for the pixel-space prompter stack, the full-resolution region-score conv followed by the grid
    pooling, and direct (not FFT) inter-frame convolutions. Parameters and state-dict keys are unchanged; other
    prompters are left as they are."""
    import types

    import torch

    from modeling_stop.modeling_stop import pool_to_grid, top_k_mask

    def ncdhw(conv):
        def forward(self, x):
            return self._conv_forward(x.contiguous(), self.weight, self.bias)

        conv.forward = types.MethodType(forward, conv)

    def region_mask(self, video):
        with torch.no_grad():
            score = self.region_score(video.contiguous()).squeeze(1)
        return top_k_mask(pool_to_grid(score, self.grid, self.layout), self.top_k)

    spatial, temporal = official_prompters(model)
    if spatial is not None:
        for module in spatial.conv:
            if isinstance(module, torch.nn.Conv3d):
                ncdhw(module)
        ncdhw(spatial.region_score)
        spatial.region_mask = types.MethodType(region_mask, spatial)
    if temporal is not None:
        for conv in (temporal.inter_conv[0], temporal.inter_conv[2], temporal.frame_weight):
            conv.forward = types.MethodType(torch.nn.Conv3d.forward, conv)
    return model


def make_inputs(spec: dict, model, batch: int):
    import torch

    vision, text = model.config.vision_config, model.config.text_config
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    size = vision.image_size
    pixels = torch.randn(batch, spec["frames"], 3, size, size, generator=gen)
    words = spec["max_words"]
    ids = torch.randint(1, text.vocab_size - 2, (batch, words), generator=gen)
    ids[:, 0] = text.bos_token_id
    lengths = torch.randint(words // 2, words, (batch,), generator=gen)
    for i, n in enumerate(lengths.tolist()):  # [SOT, words..., EOT, padding]
        ids[i, n] = text.eos_token_id
        ids[i, n + 1 :] = 0
    return pixels.to(spec["device"]), ids.to(spec["device"])


# ------------------------------------------------------------------------------------------------ measurement
class Memory:
    """Peak memory growth of this process: RSS high-water mark on CPU, allocator peak on CUDA."""

    def __init__(self, device: str):
        self.device = device
        self.base = 0

    @staticmethod
    def _status(field: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def start(self):
        import torch

        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the baseline is tight
        self.reset_ok = False
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.reset_ok = True
        self.base = self._status("VmRSS") or 0

    def peak(self) -> dict:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            return dict(
                method="torch.cuda.max_memory_allocated",
                peak_delta_mib=(torch.cuda.max_memory_allocated() - self.base) / 2**20,
            )
        hwm = self._status("VmHWM")
        if hwm is None or not self.reset_ok:  # fall back to the lifetime high-water mark
            import resource

            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return dict(
            method="VmHWM - VmRSS before" if self.reset_ok else "ru_maxrss - VmRSS before",
            peak_delta_mib=max(hwm - self.base, 0) / 2**20,
            peak_rss_mib=hwm / 2**20,
        )


def _sync(device: str):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_step(name: str, stage: str, model, pixels, ids, autocast, outputs: dict):
    """One eval forward / training step of `model`; eval steps keep their last encoding in `outputs[name]`."""
    import torch

    if stage == "eval":
        model.eval()

        def step():
            with torch.inference_mode(), autocast():
                outputs[name] = model.encode_video(pixels)

        return step
    if name == BACKBONE:  # forward + backward through the frozen ViT to the pixels
        model.eval()
        pixels = pixels.clone().requires_grad_(True)

        def step():
            pixels.grad = None
            with autocast():
                loss = model.get_frame_features(pixels).float().sum()
            loss.backward()

        return step
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = model(input_ids=ids, pixel_values=pixels, return_loss=True).loss
        loss.backward()
        optimizer.step()

    return step


def run_group(group: dict, spec: dict) -> list[dict]:
    """All models of one (stage, batch, dtype) in one process, measured in interleaved rounds.

    Round 0 runs the backbone twice (an untimed warm-up, then a timed sample) and every other model once as its
    warm-up. A model whose warm-up step alone exceeds `slow_seconds` (tens of seconds: its first-call overheads are
    negligible) keeps that step as its single sample and sits out later rounds. Rounds 1.. run every remaining model
    once, backbone first, until `repeats` rounds or `max_seconds` of timed rounds; a closing backbone sample ends the
    group. Every sample thus sits between the backbone samples of its round and of the next: `paired_ratio` is the
    median over samples of (time / mean of those two backbone times), which follows a drifting machine load;
    `ratio_to_backbone` (added later) is the plain median / backbone median.
    """
    import torch

    device, stage, batch = spec["device"], group["stage"], group["batch_size"]
    bf16 = group["dtype"] == "bf16"
    autocast = lambda: torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    names = sorted(group["models"], key=lambda n: n != BACKBONE)  # backbone first
    models = {n: build_model(n, spec) for n in names}
    pixels, ids = make_inputs(spec, models[names[0]], batch)
    outputs: dict = {}
    steps = {n: make_step(n, stage, models[n], pixels, ids, autocast, outputs) for n in names}
    gc.collect()
    gc.freeze()  # the per-step collections below then only scan what the steps create (milliseconds, not 0.3 s)
    memory = Memory(device)
    peaks = {n: {} for n in names}
    samples = {n: [] for n in names}  # (round, seconds)
    warm, counted = {}, set()

    def measure(name):
        memory.start()
        start = time.perf_counter()
        steps[name]()
        _sync(device)
        seconds = time.perf_counter() - start
        peak = memory.peak()
        if peak["peak_delta_mib"] >= peaks[name].get("peak_delta_mib", -1):
            peaks[name] = peak
        return seconds

    load = [os.getloadavg()[0]]
    timed_seconds, done, rnd = 0.0, set(), 0
    for rnd in range(spec["repeats"] + 1):
        round_start = time.perf_counter()
        for name in names:
            if name in done:
                continue
            if rnd == 0 and spec["warmup"]:
                if name == BACKBONE:
                    warm[name] = measure(name)
                    samples[name].append((0, measure(name)))
                    continue
                warm[name] = measure(name)
                if warm[name] > spec["slow_seconds"]:
                    samples[name].append((0, warm[name]))
                    counted.add(name)
                    done.add(name)
                continue
            samples[name].append((rnd, measure(name)))
        if rnd > 0 or not spec["warmup"]:
            timed_seconds += time.perf_counter() - round_start
            if timed_seconds > spec["max_seconds"]:
                break
        if all(n in done for n in names if n != BACKBONE) and len(names) > 1:
            break  # only the backbone would be left: nothing to pair it with
    if BACKBONE in names and len(names) > 1:  # a closing backbone sample brackets the last round
        samples[BACKBONE].append((rnd + 1, measure(BACKBONE)))
    load.append(os.getloadavg()[0])

    backbone = dict(samples.get(BACKBONE, []))
    results = []
    for name in names:
        times = [t for _, t in samples[name]]
        # a sample of round r sits between the backbone samples of rounds r and r + 1: their mean is its reference
        paired = []
        for r, t in samples[name]:
            around = [backbone[k] for k in (r, r + 1) if k in backbone]
            if around:
                paired.append(1.0 if name == BACKBONE else t * len(around) / sum(around))
        record = dict(
            stage=stage,
            model=name,
            batch_size=batch,
            dtype=group["dtype"],
            times_s=times,
            rounds=[r for r, _ in samples[name]],
            warmup_s=warm.get(name),
            warmup_counted=name in counted,
            median_s=statistics.median(times),
            repeats=len(times),
            paired_ratios=paired,
            paired_ratio=statistics.median(paired) if paired else None,
            loadavg_1min=load,
            trainable_params=sum(p.numel() for p in models[name].parameters() if p.requires_grad),
        )
        record.update(peaks[name])
        results.append(record)
        if stage == "eval" and group.get("embeddings_dir"):
            enc = outputs[name]
            saved = {"video_features": enc.video_features.float().cpu()}
            for key in ("spatial_mask", "frame_weights", "inserted_tokens"):
                if getattr(enc, key, None) is not None:
                    saved[key] = getattr(enc, key).float().cpu()
            torch.save(saved, embeddings_path(group["embeddings_dir"], name, batch, group["dtype"]))
    return results


def embeddings_path(directory, model, batch, dtype) -> Path:
    return Path(directory) / f"emb_{model}_b{batch}_{dtype}.pt"


def worker_main(path: str):
    payload = json.loads(Path(path).read_text())
    spec = payload["spec"]
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    results = []
    for group in payload["groups"]:
        try:
            results.extend(run_group(group, spec))
        except Exception as error:  # noqa: BLE001 - reported in the JSON, the run goes on
            results.extend(
                dict(
                    stage=group["stage"],
                    model=m,
                    batch_size=group["batch_size"],
                    dtype=group["dtype"],
                    error=f"{type(error).__name__}: {error}",
                )
                for m in group["models"]
            )
        gc.unfreeze()
        gc.collect()
    Path(payload["result_path"]).write_text(json.dumps(results))


# ------------------------------------------------------------------------------------------------ orchestration
def machine_info(device: str) -> dict:
    import torch
    import transformers

    cpu_model, flags = None, []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu_model is None:
                cpu_model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                present = set(line.split(":", 1)[1].split())
                flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in present]
    info = dict(
        device=device,
        torch=torch.__version__,
        transformers=transformers.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        cpu_model=cpu_model,
        cpu_flags=flags,
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        torch_interop_threads=torch.get_num_interop_threads(),
        mkldnn=torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
    )
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        info["loadavg_start"] = list(os.getloadavg())
    return info


def plan_groups(args, embeddings_dir: str) -> list[dict]:
    groups = []
    for dtype in args.dtypes:
        for batch in args.batch_sizes:
            groups.append(
                dict(stage="eval", batch_size=batch, dtype=dtype, models=args.models, embeddings_dir=embeddings_dir)
            )
        if args.train_batch_size:
            groups.append(dict(stage="train", batch_size=args.train_batch_size, dtype=dtype, models=args.models))
    return groups


def run_groups(groups: list[dict], spec: dict, isolation: str, workdir: Path, log) -> list[dict]:
    batches = [[g] for g in groups] if isolation == "group" else [groups]
    results = []
    for i, batch in enumerate(batches):
        payload_path, result_path = workdir / f"groups{i}.json", workdir / f"result{i}.json"
        payload_path.write_text(json.dumps(dict(spec=spec, groups=batch, result_path=str(result_path))))
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.speed", "--worker", str(payload_path)], capture_output=True, text=True
        )
        if proc.returncode != 0 or not result_path.exists():
            tail = (proc.stderr or proc.stdout)[-2000:]
            new = [
                dict(
                    stage=g["stage"],
                    model=m,
                    batch_size=g["batch_size"],
                    dtype=g["dtype"],
                    error=f"worker failed (rc {proc.returncode}): {tail}",
                )
                for g in batch
                for m in g["models"]
            ]
        else:
            new = json.loads(result_path.read_text())
        results.extend(new)
        for r in new:
            done = (
                f"{r['median_s']:.3f} s x{r['repeats']}, paired ratio {_fmt(r['paired_ratio'], 2)}"
                if "median_s" in r
                else r.get("error", "?")[:300]
            )
            log(
                f"[{time.perf_counter() - start:6.1f} s] {r['stage']:5s} {r['model']:13s} b{r['batch_size']} {r['dtype']:7s} {done}"
            )
    return results


def add_ratios(results: list[dict]):
    base = {
        (r["stage"], r["batch_size"], r["dtype"]): r["median_s"]
        for r in results
        if r["model"] == BACKBONE and "median_s" in r
    }
    for r in results:
        ref = base.get((r["stage"], r["batch_size"], r["dtype"]))
        r["backbone_median_s"] = ref
        r["ratio_to_backbone"] = r["median_s"] / ref if ref and "median_s" in r else None


def bf16_deviation(directory: str, models, batch_sizes) -> list[dict]:
    import torch
    import torch.nn.functional as F

    rows = []
    for model in models:
        for batch in batch_sizes:
            p32, p16 = (embeddings_path(directory, model, batch, d) for d in DTYPES)
            if not (p32.exists() and p16.exists()):
                continue
            a, b = torch.load(p32), torch.load(p16)
            ea, eb = F.normalize(a["video_features"], dim=-1), F.normalize(b["video_features"], dim=-1)
            row = dict(
                model=model,
                batch_size=batch,
                min_cosine=(ea * eb).sum(-1).min().item(),
                max_abs_diff=(ea - eb).abs().max().item(),
                max_abs_diff_unnormalised=(a["video_features"] - b["video_features"]).abs().max().item(),
            )
            if "spatial_mask" in a:
                row["spatial_mask_agreement"] = (a["spatial_mask"] == b["spatial_mask"]).float().mean().item()
            if "frame_weights" in a:
                row["frame_weights_max_abs_diff"] = (a["frame_weights"] - b["frame_weights"]).abs().max().item()
            if "inserted_tokens" in a:
                row["inserted_tokens_agreement"] = (a["inserted_tokens"] == b["inserted_tokens"]).float().mean().item()
            rows.append(row)
    return rows


def check_targets(results: list[dict]) -> list[dict]:
    rows = []
    targets = list(TARGETS)
    if any(r["model"] == "official_fast" for r in results):  # the candidate speed-up against the same targets
        targets += [(f"{t[0]} [official_fast]", t[1], "official_fast", *t[3:]) for t in TARGETS if t[2] == "official"]
    for name, stage, model, batch, dtype, limit in targets:
        match = [
            r for r in results if (r["stage"], r["model"], r["batch_size"], r["dtype"]) == (stage, model, batch, dtype)
        ]
        paired = match[0].get("paired_ratio") if match else None
        plain = match[0].get("ratio_to_backbone") if match else None
        authors = AUTHORS_RATIOS.get(name)
        reference = [
            r
            for r in results
            if (r["stage"], r["model"], r["batch_size"], r["dtype"]) == (stage, "official_authors", batch, dtype)
        ]
        if model == "official" and reference and reference[0].get("paired_ratio"):
            authors = reference[0]["paired_ratio"]  # measured in this run
        rows.append(
            dict(
                name=name,
                limit=limit,
                measured=paired,
                ratio_of_medians=plain,
                met=None if paired is None else paired <= limit,
                authors_code=authors,
            )
        )
    for name, stage, model, ref, batch, dtype, least in SPEEDUP_TARGETS:
        key = (stage, batch, dtype)
        mine, theirs = (
            [r for r in results if (r["stage"], r["batch_size"], r["dtype"]) == key and r["model"] == m]
            for m in (model, ref)
        )
        if not (mine and theirs and mine[0].get("paired_ratio") and theirs[0].get("paired_ratio")):
            continue
        speedup = theirs[0]["paired_ratio"] / mine[0]["paired_ratio"]
        plain = theirs[0]["median_s"] / mine[0]["median_s"]
        rows.append(
            dict(
                name=name,
                limit=least,
                kind="speed-up",
                measured=speedup,
                ratio_of_medians=plain,
                met=None if least is None else speedup >= least,
                authors_code=None,
            )
        )
    return rows


def _fmt(value, digits=3):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 10**-digits or value == 0 else f"{value:.2e}"
    return str(value)


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# STOP speed ({m['device']}, {m.get('gpu') or m.get('cpu_model')}, {m['torch_threads']} threads, torch {m['torch']})",
        "",
        f"Command: `{report['command']}`",
        "",
        f"{report['settings']['geometry']}, {report['settings']['frames']} frames, random weights. Ratios are to the frozen "
        "CLIP backbone of the same stage, batch and dtype (eval: video-tower forward; train: STOP step = forward + "
        "backward + AdamW vs. backbone forward + backward to the pixels). The models of one stage, batch and dtype run "
        "in one process in interleaved rounds; *paired ratio* = median over samples of (model time / mean time of the "
        "backbone samples just before and after it), robust to a drifting machine load; *ratio of medians* = median time / backbone median time. "
        "Peak memory growth: resident-set high-water mark over the step (reset before each step).",
        "",
        "| stage | model | batch | dtype | median (s) | paired ratio | ratio of medians | reps | peak mem growth (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "median_s" not in r:
            lines.append(f"| {r['stage']} | {r['model']} | {r['batch_size']} | {r['dtype']} | error | - | - | - | - |")
            continue
        reps = f"{r['repeats']}" + (" (its warm-up step)" if r["warmup_counted"] else "")
        lines.append(
            f"| {r['stage']} | {r['model']} | {r['batch_size']} | {r['dtype']} | {r['median_s']:.3f} | "
            f"{_fmt(r['paired_ratio'], 2)} | {_fmt(r['ratio_to_backbone'], 2)} | {reps} | {r['peak_delta_mib']:.0f} |"
        )
    if report["bf16_deviation"]:
        lines += [
            "",
            "## float32 vs bf16 autocast (video embeddings, eval)",
            "",
            "| model | batch | min cosine | max abs diff (normalised) | spatial mask agreement | frame weights max diff | inserted-token agreement |",
            "|---|---|---|---|---|---|---|",
        ]
        for d in report["bf16_deviation"]:
            lines.append(
                f"| {d['model']} | {d['batch_size']} | {d['min_cosine']:.6f} | {_fmt(d['max_abs_diff'], 4)} | "
                f"{_fmt(d.get('spatial_mask_agreement'), 4)} | {_fmt(d.get('frame_weights_max_abs_diff'), 4)} | "
                f"{_fmt(d.get('inserted_tokens_agreement'), 4)} |"
            )
    lines += [
        "",
        "## Targets (fp32)",
        "",
        "Ratios to the backbone (speed-ups: the authors' formulation's paired ratio / the model's).",
        "",
        "| target | limit | paired ratio | ratio of medians | met | authors' formulation |",
        "|---|---|---|---|---|---|",
    ]
    for t in report["targets"]:
        met = "-" if t["met"] is None else ("yes" if t["met"] else "no")
        bound = (
            "-" if t["limit"] is None else (f">= {t['limit']}" if t.get("kind") == "speed-up" else f"<= {t['limit']}")
        )
        lines.append(
            f"| {t['name']} | {bound} | {_fmt(t['measured'], 2)} | {_fmt(t['ratio_of_medians'], 2)} | "
            f"{met} | {_fmt(t['authors_code'], 1)} |"
        )
    if report.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--image_size", type=int, default=224, help="frame size (ViT-B/32 geometry: 224)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4], help="eval batch sizes")
    parser.add_argument("--train_batch_size", type=int, default=4, help="videos (and texts) per training step; 0 skips")
    parser.add_argument("--max_words", type=int, default=32)
    parser.add_argument(
        "--models",
        nargs="+",
        default=DEFAULT_MODELS,
        choices=list(MODELS),
        help="official_authors = the official variant with the authors' direct convolutions (use_authors_official_convs); "
        "official_fast = official (its fast convolutions are the package default)",
    )
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per stage/batch/dtype (at most)")
    parser.add_argument("--warmup", type=int, choices=(0, 1), default=1, help="1: a warm-up round first")
    parser.add_argument(
        "--max_seconds",
        type=float,
        default=60.0,
        help="stop adding rounds once the timed rounds of a stage/batch/dtype exceed this",
    )
    parser.add_argument(
        "--slow_seconds",
        type=float,
        default=20.0,
        help="a model whose warm-up step exceeds this keeps it as its single sample",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: torch's default)")
    parser.add_argument(
        "--isolation",
        choices=("group", "none"),
        default=None,
        help="group: a fresh subprocess per stage/batch/dtype (default); none: one subprocess for all "
        "(default with --tiny). Peak memory is reset before every step either way",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny CLIP (32 px, width 64, 2 layers), 4 frames: seconds"
    )
    parser.add_argument(
        "--output", default="benchmarks/results/speed_cpu.json", help="JSON; a .md table is written beside it"
    )
    parser.add_argument("--note", action="append", default=[], help="free-text note stored in the JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny:
        defaults = dict(frames=12, image_size=224, batch_sizes=[1, 4], repeats=5, max_words=32)
        given = {k: getattr(args, k) for k in defaults}
        if given["frames"] == 12:
            args.frames = 4
        if given["batch_sizes"] == [1, 4]:
            args.batch_sizes = [1, 2]
        if args.train_batch_size == 4:
            args.train_batch_size = 2
        if given["repeats"] == 5:
            args.repeats = 2
        if given["max_words"] == 32:
            args.max_words = 8
        args.image_size = 32
        if args.threads == 0:
            args.threads = 1  # tiny ops: one thread avoids OpenMP barrier stalls on a busy machine
    if args.isolation is None:
        args.isolation = "none" if args.tiny else "group"
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    if not args.tiny and args.image_size != 224:
        raise SystemExit("--image_size: only the ViT-B/32 geometry (224) is benchmarked; use --tiny for the tiny one")
    if BACKBONE not in args.models:
        args.models = [BACKBONE, *args.models]  # every ratio is to the backbone
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    spec = dict(
        tiny=args.tiny,
        frames=args.frames,
        max_words=args.max_words,
        device=args.device,
        seed=args.seed,
        repeats=args.repeats,
        warmup=args.warmup,
        max_seconds=args.max_seconds,
        slow_seconds=args.slow_seconds,
        threads=args.threads,
    )
    started = time.perf_counter()
    load_start = list(os.getloadavg())
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="stop-speed-") as tmp:
        results = run_groups(plan_groups(args, tmp), spec, args.isolation, Path(tmp), log)
        deviation = bf16_deviation(tmp, args.models, args.batch_sizes)
    add_ratios(results)
    info = machine_info(args.device)
    info["loadavg_start"] = load_start
    with contextlib.suppress(OSError):
        info["loadavg_end"] = list(os.getloadavg())
    notes = list(args.note)
    if "official_fast" in args.models:
        notes.append(FAST_NOTE)
    if "official_authors" in args.models:
        notes.append(AUTHORS_NOTE)
    if (
        info.get("loadavg_start")
        and info["cpu_count"]
        and max(info["loadavg_start"][0], info.get("loadavg_end", [0])[0]) > 0.5 * info["cpu_count"]
    ):
        notes.append(
            f"The machine was shared with other processes during the run (1-min load average {info['loadavg_start'][0]:.1f} at "
            f"start, {info.get('loadavg_end', [float('nan')])[0]:.1f} at end, {info['cpu_count']} CPUs; per-configuration load "
            "before/after each stage/batch/dtype in results[].loadavg_1min): absolute times are inflated and noisy, compare the ratios."
        )
    report = dict(
        command="python -m benchmarks.speed " + " ".join(sys.argv[1:] if argv is None else argv),
        machine=info,
        settings=dict(
            geometry="tiny CLIP (32 px, patch 8, width 64, 2 layers)"
            if args.tiny
            else "CLIP ViT-B/32 geometry (vision 768 x 12 layers, patch 32, 224 px; text 512 x 12 layers)",
            frames=args.frames,
            image_size=args.image_size,
            batch_sizes=args.batch_sizes,
            train_batch_size=args.train_batch_size,
            max_words=args.max_words,
            models=args.models,
            dtypes=args.dtypes,
            repeats=args.repeats,
            warmup=args.warmup,
            max_seconds=args.max_seconds,
            slow_seconds=args.slow_seconds,
            isolation=args.isolation,
            seed=args.seed,
            bf16="torch.autocast({!r}, dtype=torch.bfloat16)".format(args.device.split(":")[0]),
        ),
        results=results,
        bf16_deviation=deviation,
        targets=check_targets(results),
        notes=notes,
        total_seconds=time.perf_counter() - started,
    )
    output.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    output.with_suffix(".md").write_text(table)
    print(table)
    failed = [r for r in results if "error" in r]
    if failed:
        print(f"{len(failed)} configuration(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
