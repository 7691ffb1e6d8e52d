"""The results table: train every row with the same recipe and budget, evaluate on the test split, write a table.

    python -m benchmarks.run_table --dataset_name data/synthetic --output_dir outputs/table --seeds 0 1 2

Rows: the frozen CLIP (mean pooling, zero-shot), DGL prompts only, STOP official, STOP paper, STOP paper
spatial-only / temporal-only, and the order-aware rows with CLIP4Clip's seqTransf temporal head. Every trained row
uses `training/train.py` with the same flags (`--train_args`), so the only difference is the model definition.
Model selection inside a run is on the validation split; the table reports the test split.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from training.recipe import head_stage_file

REPO = Path(__file__).resolve().parents[1]
NO_STOP = ["use_spatial_prompt=False", "use_temporal_prompt=False"]
NO_HEAD = "temporal_head=none"  # explicit: train.py's recipe adds the seqTransf head by default
FROZEN = ["use_dgl_prompts=False", *NO_STOP]

# name -> (training overrides or None for zero-shot, description)
ROWS = {
    "clip-meanP": (None, "frozen CLIP, mean-pooled frames, zero-shot (0 trainable)"),
    # train.py with its defaults: the two-stage recipe of training/recipe.py (paper variant + seqTransf head on frozen
    # frame features, stage 1 on cached features, stage 2 end to end).
    "default": ([], "the default recipe (training/recipe.py), no flags"),
    "clip-seqTransf": (FROZEN + ["temporal_head=seqTransf"], "frozen CLIP + seqTransf head (CLIP4Clip)"),
    "dgl": (["variant=official", *NO_STOP, NO_HEAD], "DGL prompts only (generator, global/local prompts, adapters)"),
    "stop-official": (["variant=official", NO_HEAD], "STOP, authors' released formulation"),
    "stop-paper": (["variant=paper", NO_HEAD], "STOP, the paper's formulation"),
    # the paper variant's DGL prompts alone, no head: STOP's prompts against none where no head carries the feature
    "stop-paper-dgl": (["variant=paper", *NO_STOP, NO_HEAD], "paper variant, DGL prompts only, no head"),
    "stop-paper-spatial": (
        ["variant=paper", "use_temporal_prompt=False", NO_HEAD],
        "STOP paper, spatial prompting only",
    ),
    "stop-paper-temporal": (
        ["variant=paper", "use_spatial_prompt=False", NO_HEAD],
        "STOP paper, temporal prompting only",
    ),
    "stop-official-seqTransf": (["variant=official", "temporal_head=seqTransf"], "STOP official + seqTransf"),
    "stop-paper-seqTransf": (["variant=paper", "temporal_head=seqTransf"], "STOP paper + seqTransf"),
    "stop-paper-seqTransf-prompted": (
        ["variant=paper", "temporal_head=seqTransf", "temporal_head_input=prompted"],
        "STOP paper + seqTransf over the prompted frame features, trained jointly (no stage 1)",
    ),
    "stop-paper-seqTransf-pos": (
        ["variant=paper", "temporal_head=seqTransf", "frame_position_embeddings=True"],
        "STOP paper + seqTransf + frame position embeddings",
    ),
    # The cached fast path buys ~15x more epochs in the wall time of one end-to-end STOP row: a DIFFERENT budget
    # (equal wall time, not equal epochs), reported as its own row.
    "clip-seqTransf-long": (
        FROZEN + ["temporal_head=seqTransf"],
        "frozen CLIP + seqTransf, 60 epochs on cached features",
    ),
    # The official variant's end-to-end CPU step is far slower: one epoch, for a paper-vs-official comparison at the
    # same (reduced) budget as `stop-paper-1epoch`.
    "stop-official-1epoch": (["variant=official", NO_HEAD], "STOP official, 1 epoch"),
    "stop-paper-1epoch": (["variant=paper", NO_HEAD], "STOP paper, 1 epoch"),
    # Ablations of the default (same recipe, head included, one switch changed): what each mechanism of the paper
    # variant adds, as a paired difference against `default` over the same seeds.
    "default-dgl-only": (NO_STOP, "default without STOP's spatial and temporal prompts (DGL prompts + head)"),
    "default-spatial-only": (["use_temporal_prompt=False"], "default without the inter-frame (temporal) prompts"),
    "default-temporal-only": (["use_spatial_prompt=False"], "default without the intra-frame (spatial) prompts"),
    "default-static-insertion": (
        ["max_inserted_tokens=1"],
        "default with one inserted token in every gap (insertion that does not follow the video)",
    ),
    "default-first-layer": (["paper_prompt_layers=[0]"], "default with prompting in the first layer only"),
    "default-paper-v1": (["paper_version=1"], "default with the first paper layout (prompting once, pooled frames)"),
    "default-frames-prompter": (
        ["paper_temporal_prompter=frames"],
        "default with the inter-frame prompter on pooled frame vectors instead of region tokens",
    ),
    "default-no-neighbour": (
        ["paper_neighbour_attention=False"],
        "default with inserted tokens seen by the preceding frame only",
    ),
    "default-no-identity": (["paper_frame_identity=False"], "default without per-frame identity of local prompts"),
    "default-absolute-counts": (
        ["insertion_calibration=absolute"],
        "default with counts ceil(insertion_scale * (1 - cos)) instead of ranked within the video",
    ),
    "default-official": (["variant=official"], "the default recipe with the official variant (`--variant official`)"),
}
# Rows whose training flags differ from the common recipe (appended after --train_args, so they win).
ROW_TRAIN_ARGS = {
    "clip-seqTransf-long": ["--num_train_epochs", "60"],
    "stop-official-1epoch": ["--num_train_epochs", "1"],
    "stop-paper-1epoch": ["--num_train_epochs", "1"],
}
COLUMNS = [
    ("t2v_R@1", "T2V R@1"),
    ("t2v_R@5", "R@5"),
    ("t2v_R@10", "R@10"),
    ("t2v_MdR", "MdR"),
    ("t2v_MnR", "MnR"),
    ("v2t_R@1", "V2T R@1"),
    ("v2t_R@5", "R@5"),
    ("v2t_R@10", "R@10"),
    ("v2t_MdR", "MdR"),
    ("v2t_MnR", "MnR"),
    ("classification/top1_accuracy", "cls top-1"),
    ("pair_accuracy", "pair acc"),
    ("twin_cosine", "twin cos"),
]
# Paired differences against the default recipe (same seeds, same test videos): mean and spread over seeds.
PAIRED = [("t2v_R@1", "ΔT2V R@1"), ("v2t_R@1", "ΔV2T R@1"), ("pair_accuracy", "Δpair acc")]
REFERENCE = "default"


def run(cmd: list[str], log: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")


def result_path(output_dir, name: str, seed: int) -> Path:
    """Where the test report of one (row, seed) run lives; its existence marks the run finished."""
    return Path(output_dir) / f"{name}-seed{seed}" / "test_eval.json"


def shared_head_stage_args(name: str, seed: int, args) -> list[str]:
    """`--shared_head_stage ROW`: every other row starts stage 2 from ROW's stage 1 of the same seed (rows without
    a stage 1 ignore the flag)."""
    shared = getattr(args, "shared_head_stage", None)
    if not shared or name == shared:
        return []
    source = Path(args.output_dir) / f"{shared}-seed{seed}" / "model"
    if not head_stage_file(source).exists():
        raise SystemExit(f"--shared_head_stage {shared}: {source} holds no stage 1 (run the row {shared} first)")
    return ["--head_stage_from", str(source)]


def run_row(name: str, seed: int, args) -> dict:
    overrides, _ = ROWS[name]
    result_file = result_path(args.output_dir, name, seed)
    out = result_file.parent
    out.mkdir(parents=True, exist_ok=True)
    if result_file.exists():  # re-running the table reuses finished rows
        return json.loads(result_file.read_text())
    start = time.perf_counter()
    if overrides is None:
        model, extra = args.model_name_or_path, ["--baseline", "meanP", "--num_frames", str(args.num_frames)]
    else:
        train = [
            sys.executable,
            "training/train.py",
            "--model_name_or_path",
            args.model_name_or_path,
            "--dataset_name",
            args.dataset_name,
            "--output_dir",
            str(out / "model"),
            "--seed",
            str(seed),
            "--num_frames",
            str(args.num_frames),
            *args.train_args.split(),
            *ROW_TRAIN_ARGS.get(name, []),
            *shared_head_stage_args(name, seed, args),
            "--stop_config_overrides",
            *overrides,
        ]
        run(train, out / "train.log")
        model, extra = str(out / "model"), []
    evaluation = [
        sys.executable,
        "-m",
        "benchmarks.run_eval",
        "--model_name_or_path",
        model,
        "--dataset_name",
        args.dataset_name,
        "--split",
        "test",
        "--seed",
        str(seed),
        "--output_json",
        str(out / "eval_raw.json"),
        *extra,
    ]
    if args.max_eval_samples:
        evaluation += ["--max_samples", str(args.max_eval_samples)]
    run(evaluation, out / "eval.log")
    report = json.loads((out / "eval_raw.json").read_text())
    report["row"], report["seed"], report["row_wall_time_s"] = name, seed, round(time.perf_counter() - start, 1)
    result_file.write_text(json.dumps(report, indent=1))
    return report


def summarise(reports: list[dict]) -> dict:
    """Mean and spread (population std over seeds; 0 with one seed) of every metric of one row."""
    keys = reports[0]["metrics"].keys()
    out = {}
    for key in keys:
        values = [r["metrics"][key] for r in reports if isinstance(r["metrics"].get(key), (int, float))]
        if values:
            out[key] = (statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0)
    return out


def _digits(key: str) -> int:
    """Decimals of a metric in the tables: shares and cosines 3, recalls (percent) and ranks 1."""
    return 3 if key in ("pair_accuracy", "twin_cosine") else 1


def paired_differences(reports: dict[str, list[dict]], reference: str = REFERENCE) -> dict:
    """Per row, the mean and spread over seeds of (row - reference) for the `PAIRED` metrics, on the seeds both
    rows ran; the reference row itself and rows without a shared seed are left out."""
    if reference not in reports:
        return {}
    base = {r["seed"]: r["metrics"] for r in reports[reference]}
    out = {}
    for name, runs in reports.items():
        if name == reference:
            continue
        stats = {}
        for key, _ in PAIRED:
            diffs = [
                r["metrics"][key] - base[r["seed"]][key]
                for r in runs
                if r["seed"] in base and key in r["metrics"] and key in base[r["seed"]]
            ]
            if diffs:
                stats[key] = (statistics.fmean(diffs), statistics.pstdev(diffs) if len(diffs) > 1 else 0.0, len(diffs))
        if stats:
            out[name] = stats
    return out


def paired_markdown(paired: dict, reference: str = REFERENCE) -> list[str]:
    if not paired:
        return []
    lines = [
        "",
        f"Paired differences against `{reference}` (same seeds, same test videos; mean ± spread over seeds):",
        "",
        "| row | seeds | " + " | ".join(label for _, label in PAIRED) + " |",
        "|" + "---|" * (len(PAIRED) + 2),
    ]
    for name, stats in paired.items():
        seeds = max(n for _, _, n in stats.values())
        cells = []
        for key, _ in PAIRED:
            if key not in stats:
                cells.append("-")
                continue
            mean, std, _ = stats[key]
            digits = _digits(key)
            cells.append(f"{mean:+.{digits}f} ± {std:.{digits}f}")
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    return lines


def markdown(
    table: dict,
    seeds: list[int],
    command: str,
    wall: float,
    paired: dict | None = None,
    row_seeds: dict[str, list[int]] | None = None,
    summed_wall: bool = False,
    reference: str = REFERENCE,
) -> str:
    """The table; `row_seeds` (row -> the seeds it ran, when rows differ) adds a seeds column, and a row shows its
    spread only when it ran more than one seed."""
    row_seeds = row_seeds or {}
    varied = any(sorted(s) != sorted(seeds) for s in row_seeds.values())
    head = "| row | " + ("seeds | " if varied else "") + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1 + varied)]
    for name, stats in table.items():
        ran = row_seeds.get(name, seeds)
        cells = [" ".join(map(str, ran))] if varied else []
        for key, _ in COLUMNS:
            if key not in stats:
                cells.append("-")
                continue
            mean, std = stats[key]
            digits = _digits(key)
            cells.append(f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if len(ran) > 1 else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    per_kind = sorted({k for stats in table.values() for k in stats if k.startswith("pair_accuracy/")})
    if per_kind:
        lines += [
            "",
            "Reversed-pair accuracy by motion kind:",
            "",
            "| row | " + " | ".join(k.split("/", 1)[1] for k in per_kind) + " |",
            "|" + "---|" * (len(per_kind) + 1),
        ]
        for name, stats in table.items():
            lines.append(
                f"| {name} | " + " | ".join(f"{stats[k][0]:.2f}" if k in stats else "-" for k in per_kind) + " |"
            )
    lines += paired_markdown(paired or {}, reference)
    lines += [
        "",
        f"Seeds: {seeds}. Recalls in percent, ranks 1-based, test split. Produced by `{command}` "
        + (
            f"from finished runs whose recorded wall times sum to {wall / 60:.1f} min."
            if summed_wall
            else f"in {wall / 60:.1f} min."
        ),
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_name", required=True)
    parser.add_argument(
        "--model_name_or_path",
        default=str(REPO / "checkpoints" / "clip-synthetic"),
        help="the CLIP every row starts from",
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--num_frames", type=int, default=8)
    parser.add_argument("--train_args", default="", help="extra flags for training/train.py, the same for every row")
    parser.add_argument("--max_eval_samples", type=int, default=None)
    parser.add_argument(
        "--finished_only",
        action="store_true",
        help="train and evaluate nothing: write the table of the (row, seed) runs already finished in --output_dir "
        "(a table resumed over several sittings); rows with no finished seed are left out",
    )
    parser.add_argument(
        "--reference",
        default=REFERENCE,
        choices=list(ROWS),
        help="the row the paired differences are taken against (default: the default recipe)",
    )
    parser.add_argument(
        "--shared_head_stage",
        default=None,
        choices=list(ROWS),
        help="train stage 1 only in this row and start every other row's stage 2 from it (same seed): the paired "
        "differences then measure stage 2 alone",
    )
    args = parser.parse_args(argv)
    if args.shared_head_stage in args.rows:  # its runs first: the others load their stage 1
        args.rows = [args.shared_head_stage] + [r for r in args.rows if r != args.shared_head_stage]

    start = time.perf_counter()
    if args.finished_only:
        reports = {}
        for name in args.rows:
            files = [result_path(args.output_dir, name, seed) for seed in args.seeds]
            if runs := [json.loads(f.read_text()) for f in files if f.exists()]:
                reports[name] = runs
        if not reports:
            raise SystemExit(
                f"--finished_only: no finished run of {args.rows} with seeds {args.seeds} in {args.output_dir}"
            )
    else:
        reports = {name: [run_row(name, seed, args) for seed in args.seeds] for name in args.rows}
    table = {name: summarise(r) for name, r in reports.items()}
    command = "python -m benchmarks.run_table " + " ".join(argv if argv is not None else sys.argv[1:])
    paired = paired_differences(reports, args.reference)
    row_seeds = {name: [r["seed"] for r in runs] for name, runs in reports.items()}
    wall = time.perf_counter() - start
    if args.finished_only:  # the runs' own wall time, summed over the rows and seeds of the table
        wall = sum(r.get("row_wall_time_s") or 0.0 for runs in reports.values() for r in runs)
    text = markdown(
        table, args.seeds, command, wall, paired, row_seeds, summed_wall=args.finished_only, reference=args.reference
    )
    out = Path(args.output_dir)
    (out / "table.md").write_text(text + "\n")
    (out / "table.json").write_text(
        json.dumps(
            {
                "rows": {n: {"description": ROWS[n][1], "runs": r} for n, r in reports.items()},
                "paired_differences": {n: {k: list(v) for k, v in st.items()} for n, st in paired.items()},
            },
            indent=1,
        )
    )
    print(text)


if __name__ == "__main__":
    main()
