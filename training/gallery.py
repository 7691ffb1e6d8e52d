"""Index a video collection for text search: embed every video once, save a `datasets.Dataset` with an
`embedding` column, and build a FAISS index over it.

    python -m training.gallery --model_name_or_path checkpoints/stop-synthetic \\
        --dataset_name data/synthetic --split test --output_dir outputs/gallery
    accelerate launch -m training.gallery ...      # several processes/GPUs/nodes: shards are split between them

The work is cut into shards of `--shard_size` videos, each written atomically when done, so an interrupted run
started again continues where it stopped. Videos that fail to decode are skipped and listed in `failed.json`.
Query it with `search_gallery` (or `Dataset.get_nearest_examples`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from datasets import Dataset, load_from_disk
from tqdm.auto import tqdm

from modeling_stop import STOPModel, STOPProcessor

from .data import VideoTextCollator, VideoTextDataset, build_dataloader, load_video_text_dataset

EMBEDDING_COLUMN = "embedding"


def _shard_path(output_dir: Path, shard: int) -> Path:
    return output_dir / "shards" / f"shard_{shard:05d}.npz"


def _write_atomic_npz(path: Path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


@torch.inference_mode()
def embed_shards(
    model: STOPModel,
    processor: STOPProcessor,
    dataset: VideoTextDataset,
    output_dir: str | Path,
    shard_size: int = 256,
    batch_size: int = 8,
    num_workers: int = 0,
    accelerator: Accelerator | None = None,
) -> list[int]:
    """Embed the videos of `dataset` into `output_dir/shards/*.npz` (indices, normalised embeddings, failures),
    skipping shards already written. Shards are split between the processes of `accelerator`. Returns the shards
    this process wrote."""
    accelerator = accelerator or Accelerator()
    output_dir = Path(output_dir)
    num_shards = math.ceil(len(dataset) / shard_size)
    todo = [s for s in range(num_shards) if not _shard_path(output_dir, s).exists()]
    written = []
    model = model.to(accelerator.device).eval()
    collate = VideoTextCollator(processor)
    with accelerator.split_between_processes(todo) as mine:
        for shard in tqdm(mine, desc="Embedding shards", disable=not accelerator.is_local_main_process):
            indices = list(range(shard * shard_size, min((shard + 1) * shard_size, len(dataset))))
            subset = torch.utils.data.Subset(dataset, indices)
            loader = build_dataloader(subset, collate, batch_size=batch_size, num_workers=num_workers)
            rows, embeds, failed = [], [], []
            for batch in loader:
                failed += batch["failed"]
                if "pixel_values" not in batch:
                    continue
                features = model.get_video_features(
                    batch["pixel_values"].to(accelerator.device), batch["video_mask"].to(accelerator.device)
                )
                embeds.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy())
                rows += batch["indices"].tolist()  # row numbers of the split
            dim = model.config.projection_dim
            _write_atomic_npz(
                _shard_path(output_dir, shard),
                indices=np.asarray(rows, dtype=np.int64),
                embeddings=np.concatenate(embeds) if embeds else np.zeros((0, dim), np.float32),
                failed=np.asarray(failed, dtype=str),
            )
            written.append(shard)
    accelerator.wait_for_everyone()
    return written


def assemble_gallery(split, output_dir: str | Path, num_shards: int, keep_columns: list[str]) -> Dataset:
    """Join the shards into a `Dataset` (the split's `keep_columns` + `embedding`) saved in `output_dir/dataset`."""
    output_dir = Path(output_dir)
    indices, embeds, failed = [], [], []
    for shard in range(num_shards):
        with np.load(_shard_path(output_dir, shard)) as data:
            indices.append(data["indices"])
            embeds.append(data["embeddings"])
            failed += data["failed"].tolist()
    indices = np.concatenate(indices)
    gallery = split.select(indices.tolist()).select_columns(keep_columns)
    gallery = gallery.add_column(EMBEDDING_COLUMN, list(np.concatenate(embeds).astype(np.float32)))
    gallery.save_to_disk(str(output_dir / "dataset"))
    (output_dir / "failed.json").write_text(json.dumps(failed, indent=1))
    return gallery


# Below this many embeddings an exact (flat) search is fast enough (~5 ms per query at 512-d on 2 cores); above it
# an inverted file over 4-bit product-quantised codes, re-ranked exactly, answers in milliseconds up to ~1M.
EXACT_MAX_SIZE = 50_000
INDEX_FILE = "embedding.faiss"
INDEX_PARAMS_FILE = "embedding.faiss.json"
INDEX_KINDS = ("auto", "flat", "ivfpq", "ivf", "hnsw")
# Candidates re-ranked with the exact vectors: k_factor * k. Raised by the calibration when a full scan of the
# codes still misses the target.
DEFAULT_K_FACTOR = 32
CALIBRATION_QUERIES = 150  # per kind of calibration query (left-out gallery rows, perturbed gallery rows)
PERTURBATION = 0.3  # norm of the noise added to a unit gallery row for a perturbed calibration query


def _embedding_matrix(gallery: Dataset, rows=None) -> np.ndarray:
    """The `embedding` column (or some rows of it) as a C-contiguous float32 [n, dim] array."""
    if EMBEDDING_COLUMN not in gallery.column_names:
        raise ValueError(
            f"add_index: the gallery has no '{EMBEDDING_COLUMN}' column (columns: {gallery.column_names}); build it with "
            "`python -m training.gallery` or add normalised video embeddings under that name"
        )
    if rows is None and gallery._indices is None:  # no row mapping: read the table's column without a copy
        column = gallery.data.column(EMBEDDING_COLUMN)
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    else:
        view = gallery.with_format("arrow", columns=[EMBEDDING_COLUMN])
        column = (view[:] if rows is None else view[rows])[EMBEDDING_COLUMN].combine_chunks()
    lengths = pa_list_lengths(column)
    if len(column) and (lengths != lengths[0]).any():
        bad = int(np.flatnonzero(lengths != lengths[0])[0])
        raise ValueError(
            f"add_index: row {bad} of '{EMBEDDING_COLUMN}' has {lengths[bad]} values, row 0 has {lengths[0]}: "
            "every embedding must have the same size"
        )
    dim = int(lengths[0]) if len(column) else 0
    matrix = np.ascontiguousarray(
        column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), dim), dtype=np.float32
    )
    if not np.isfinite(matrix).all():
        bad = int(np.flatnonzero(~np.isfinite(matrix).all(axis=1))[0])
        raise ValueError(
            f"add_index: row {bad if rows is None else rows[bad]} of '{EMBEDDING_COLUMN}' is not finite; "
            "re-embed that video"
        )
    return matrix


def pa_list_lengths(column) -> np.ndarray:
    """Value counts of a (fixed-size or variable) pyarrow list array."""
    import pyarrow.compute as pc

    return pc.list_value_length(column).to_numpy(zero_copy_only=False)


def _pq_subquantizers(dim: int) -> int:
    """Sub-quantizers of the 4-bit product quantizer: about one per 8 dimensions (64 at 512-d), dividing `dim`."""
    return next(m for m in range(max(1, dim // 8), 0, -1) if dim % m == 0)


def choose_index(num_vectors: int, exact_max_size: int = EXACT_MAX_SIZE, kind: str = "auto", dim: int = 512) -> dict:
    """The index parameters for a gallery of `num_vectors` `dim`-d embeddings: `flat` (exact) up to
    `exact_max_size`, else `ivfpq`: an inverted file of ~sqrt(n)/4 lists (k-means on a random sample of 64 vectors per
    list) holding 4-bit product-quantised codes (one sub-quantizer per ~8 dimensions, SIMD "fast scan"), whose
    `k_factor * k` best candidates are re-ranked with the exact vectors; its nprobe and k_factor are calibrated later.
    Even a scan of every list stays cheap (32 bytes per 512-d vector), so galleries whose clusters are much finer
    than the lists keep their recall. `ivf` (exact vectors in the lists, no re-ranking) and `hnsw` on request."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"add_index: index kind must be auto, flat, ivfpq, ivf or hnsw, got {kind!r}")
    if kind == "flat" or (kind == "auto" and num_vectors <= exact_max_size):
        return dict(kind="flat")
    if kind == "hnsw":
        return dict(kind="hnsw", M=32, ef_construction=80, ef_search=None)
    # sqrt(n) / 4 lists: k-means and assignment stay cheap on two cores; a list holds ~4 sqrt(n) codes, so a scan of
    # one or a few lists (coarse clusters) or of all (fine clusters) both cost little
    nlist = max(
        1, min(int(math.sqrt(num_vectors) / 4), num_vectors // 39)
    )  # FAISS wants >= 39 training points per list
    params = dict(kind="ivf", nlist=nlist, train_size=min(num_vectors, 64 * nlist), nprobe=None)
    if kind in ("auto", "ivfpq"):
        params.update(kind="ivfpq", pq_m=_pq_subquantizers(dim), pq_bits=4, by_residual=None, k_factor=None)
    return params


def _build_faiss(params: dict, dim: int):
    import faiss

    if params["kind"] == "flat":
        return faiss.IndexFlatIP(dim)
    if params["kind"] == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
        return index
    quantizer = faiss.IndexFlatIP(dim)
    if params["kind"] == "ivf":
        return faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.IndexIVFPQFastScan(
        quantizer, dim, params["nlist"], params["pq_m"], params["pq_bits"], faiss.METRIC_INNER_PRODUCT
    )
    return faiss.IndexRefineFlat(ivf)  # keeps the exact vectors for re-ranking


KMEANS_ITERATIONS = 10  # the lists only need to be a partition: more Lloyd steps cost minutes at 1M for little


def _train_ivf(index, params: dict, sample: np.ndarray, seed: int):
    """Spherical k-means of the coarse quantizer on `sample`, then (`ivfpq`) the product quantizer. The codes
    encode the residuals to the list centroids when those are shorter than the unit vectors themselves (mean
    |x - c|^2 < 1: the lists follow the clusters), else the vectors (clusters much finer than the lists, where
    residuals would be longer and coarser). The choice and the mean squared residual go into `params`."""
    import faiss

    ivf = _ivf_part(index)
    kmeans = faiss.Kmeans(sample.shape[1], params["nlist"], niter=KMEANS_ITERATIONS, spherical=True, seed=seed)
    kmeans.train(sample)
    ivf.quantizer.add(kmeans.centroids)  # a trained quantizer of nlist centroids: index.train keeps it
    params["kmeans_iterations"] = KMEANS_ITERATIONS
    if params["kind"] == "ivfpq":
        nearest = ivf.quantizer.search(sample, 1)[0][:, 0]
        params["mean_squared_residual"] = round(float(np.mean(2 - 2 * nearest)), 4)
        params["by_residual"] = bool(params["mean_squared_residual"] < 1.0)
        ivf.by_residual = params["by_residual"]
    subset = np.sort(np.random.default_rng(seed).permutation(len(sample))[:PQ_TRAIN_SIZE])
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # hundreds of tiny k-means: on a busy machine threads only wait at the barriers
    try:  # (75 s with 2 threads against 2.5 s with one, measured at load 9)
        index.train(sample[subset])  # the 16 centroids per sub-quantizer need a few thousand points
    finally:
        faiss.omp_set_num_threads(threads)


PQ_TRAIN_SIZE = 16_384


def _ivf_part(index):
    """The inverted file inside an index (itself, or the base of an `IndexRefineFlat`)."""
    import faiss

    return faiss.extract_index_ivf(faiss.downcast_index(index.base_index) if hasattr(index, "k_factor") else index)


def _apply_search_params(index, params: dict):
    if params["kind"] in ("ivf", "ivfpq"):
        _ivf_part(index).nprobe = params["nprobe"]
    if params["kind"] == "ivfpq":
        index.k_factor = float(params["k_factor"])
    elif params["kind"] == "hnsw":
        index.hnsw.efSearch = params["ef_search"]


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found top-k & exact top-k| / k."""
    k = exact.shape[1]
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact)]))


K_FACTORS = (16, 32, 64, 128, 256, 512)


def _search_cost_ms(params: dict, setting: dict) -> float:
    """Rough single-thread cost of one query under `setting`, from timings on this machine: the fast scan of the
    probed codes (~0.06 ns per code byte pair) and the exact re-ranking of k_factor * 10 candidates (~1.2 ns per
    dimension); only used to try the search settings cheapest first."""
    scanned = params["num_vectors"] * setting["nprobe"] / params["nlist"]
    rerank = setting.get("k_factor", 0) * 10 * params["dim"]
    return 6.25e-8 * params.get("pq_m", 4 * params["dim"]) * scanned + 1.2e-6 * rerank


def _search_settings(params: dict) -> list[list[dict]]:
    """The search settings the calibration tries: groups (one per k_factor for `ivfpq`), each ordered by cost."""
    if params["kind"] == "hnsw":
        return [[dict(ef_search=e) for e in (16, 32, 64, 128, 256, 512, 1024, 2048)]]
    nlist = params["nlist"]
    nprobes = sorted({min(2**i, nlist) for i in range(int(math.ceil(math.log2(nlist))) + 1)})
    if params["kind"] == "ivf":
        return [[dict(nprobe=p) for p in nprobes]]
    return [[dict(nprobe=p, k_factor=f) for p in nprobes] for f in K_FACTORS]


def calibration_queries(vectors: np.ndarray, rng, num: int = CALIBRATION_QUERIES) -> dict:
    """Two kinds of held-out query over gallery rows, with their exact top-(k+1) found by brute force later:
    `left_out` rows searched with themselves excluded from both result lists (queries like fresh draws from the
    gallery's distribution) and `perturbed` rows (a row plus isotropic noise of norm `PERTURBATION`, normalised;
    the row itself counts among the neighbours)."""
    rows = rng.choice(len(vectors), size=min(num, len(vectors)), replace=False)
    noise = rng.standard_normal((len(rows), vectors.shape[1])).astype(np.float32)
    noise *= PERTURBATION / np.linalg.norm(noise, axis=1, keepdims=True)
    perturbed = vectors[rows] + noise
    perturbed /= np.linalg.norm(perturbed, axis=1, keepdims=True)
    return dict(left_out=(rows, np.ascontiguousarray(vectors[rows])), perturbed=(None, perturbed))


def _calibrate(index, params: dict, vectors: np.ndarray, target_recall: float, k: int, rng) -> dict:
    """The cheapest search setting (`_search_settings`) whose recall@k against exact search reaches
    `target_recall` on both kinds of calibration query (`calibration_queries`); the most thorough one when none
    does. Returns the setting with the recalls it measured."""
    import faiss

    k = min(k, len(vectors) - 1)
    sets = {}
    for name, (rows, queries) in calibration_queries(vectors, rng).items():
        exact = faiss.knn(queries, vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)[1]  # brute force
        sets[name] = (rows, queries, _top_k(exact, rows, k))

    def recalls_of(setting):
        _apply_search_params(index, {**params, **setting})
        return {
            name: recall_at_k(_top_k(index.search(queries, k + 1)[1], rows, k), exact)
            for name, (rows, queries, exact) in sets.items()
        }

    best, best_cost, setting, recalls = None, math.inf, {}, {}
    for group in _search_settings(params):  # per group the first setting reaching the target; the cheapest wins
        for setting in group:
            cost = _search_cost_ms(params, setting) if params["kind"] != "hnsw" else 0.0
            if cost >= best_cost:
                break
            recalls = recalls_of(setting)
            if min(recalls.values()) >= target_recall:
                best, best_cost = (setting, recalls), cost
                break
    setting, recalls = best if best is not None else (setting, recalls)  # none reached it: the most thorough
    return dict(
        setting,
        calibration_recall_at_10=round(min(recalls.values()), 4),
        calibration={f"recall_at_{k}_{name}": round(r, 4) for name, r in recalls.items()}
        | dict(queries_per_kind=len(sets["left_out"][0]), perturbation=PERTURBATION, target_recall=target_recall),
    )


def _top_k(ids: np.ndarray, rows, k: int) -> np.ndarray:
    """The first k ids of each result list, the query's own row left out when it is a gallery row (`rows`)."""
    if rows is None:
        return ids[:, :k]
    return np.stack([[i for i in found if i != row][:k] for found, row in zip(ids, rows)])


def add_index(
    gallery: Dataset | str | os.PathLike,
    output_dir: str | Path | None = None,
    exact_max_size: int = EXACT_MAX_SIZE,
    kind: str = "auto",
    target_recall: float = 0.97,
    seed: int = 0,
) -> Dataset:
    """Attach an inner-product FAISS index (= cosine over normalised embeddings) to the `embedding` column and
    return the dataset; `gallery` is a `Dataset` or the folder of a saved one.

    The index fits the gallery's size (`choose_index`): exact (flat) up to `exact_max_size` vectors, above it an
    inverted file of product-quantised codes trained on a random sample, with exact re-ranking (`ivfpq`); its
    `nprobe` and `k_factor` the cheapest reaching `target_recall`@10 against exact search on held-out gallery rows
    and perturbed gallery rows (`_calibrate`). `kind="ivf"` (IVF-Flat) and `kind="hnsw"` (HNSW32, efSearch
    calibrated the same way) on request. Its parameters are recorded in `gallery.get_index("embedding").parameters`
    and, with `output_dir`, saved beside the index (`embedding.faiss`, `embedding.faiss.json`) for `load_gallery`."""
    if not isinstance(gallery, Dataset):
        gallery = load_from_disk(str(gallery))
    vectors = _embedding_matrix(gallery)
    params = choose_index(len(vectors), exact_max_size, kind, dim=int(vectors.shape[1]) if vectors.size else 512)
    params.update(num_vectors=len(vectors), dim=int(vectors.shape[1]), metric="inner_product")
    index = _build_faiss(params, vectors.shape[1])
    rng = np.random.default_rng(seed)
    timings = {}
    start = time.perf_counter()
    if params["kind"] in ("ivf", "ivfpq"):
        sample = np.sort(rng.choice(len(vectors), size=params["train_size"], replace=False))
        _train_ivf(index, params, vectors[sample], seed)
    timings["train_s"] = time.perf_counter() - start
    index.add(vectors)
    timings["add_s"] = time.perf_counter() - start - timings["train_s"]
    if params["kind"] != "flat":
        params.update(_calibrate(index, params, vectors, target_recall, 10, rng))
        timings["calibrate_s"] = time.perf_counter() - start - timings["train_s"] - timings["add_s"]
        params["build_seconds"] = {name: round(t, 1) for name, t in timings.items()}
    del vectors
    _apply_search_params(index, params)
    _attach_index(gallery, index)
    gallery.get_index(EMBEDDING_COLUMN).parameters = params
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        gallery.save_faiss_index(EMBEDDING_COLUMN, str(Path(output_dir) / INDEX_FILE))
        (Path(output_dir) / INDEX_PARAMS_FILE).write_text(json.dumps(params, indent=1) + "\n")
    return gallery


def save_gallery(gallery: Dataset, output_dir: str | Path) -> Dataset:
    """Save a gallery with its attached index into `output_dir` (`dataset/`, `embedding.faiss`, its parameters) so
    that `load_gallery(output_dir)` restores both; returns the gallery with the index attached again."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    params = index_parameters(gallery)
    gallery.save_faiss_index(EMBEDDING_COLUMN, str(output_dir / INDEX_FILE))
    (output_dir / INDEX_PARAMS_FILE).write_text(json.dumps(params, indent=1) + "\n")
    gallery.drop_index(EMBEDDING_COLUMN)  # datasets saves only index-free datasets
    gallery.save_to_disk(str(output_dir / "dataset"))
    gallery.load_faiss_index(EMBEDDING_COLUMN, str(output_dir / INDEX_FILE))
    _apply_search_params(gallery.get_index(EMBEDDING_COLUMN).faiss_index, params)
    gallery.get_index(EMBEDDING_COLUMN).parameters = params
    return gallery


def _attach_index(gallery: Dataset, index):
    """Attach a filled FAISS index to the `embedding` column, as `Dataset.add_faiss_index` does after adding the
    rows (which would read and add every vector a second time)."""
    from datasets.search import FaissIndex

    if isinstance(getattr(gallery, "_indexes", None), dict):
        gallery._indexes[EMBEDDING_COLUMN] = FaissIndex(custom_index=index)
        return
    index.reset()  # keeps an IVF index's training; datasets adds the rows again
    gallery.add_faiss_index(column=EMBEDDING_COLUMN, custom_index=index, batch_size=10_000)


def index_parameters(gallery: Dataset) -> dict:
    """The recorded parameters of the gallery's `embedding` index (kind, sizes, nlist/nprobe or HNSW settings)."""
    return dict(getattr(gallery.get_index(EMBEDDING_COLUMN), "parameters", {}))


def load_gallery(output_dir: str | Path) -> Dataset:
    """A saved gallery with its FAISS index attached (search parameters restored from `embedding.faiss.json`)."""
    gallery = load_from_disk(str(Path(output_dir) / "dataset"))
    gallery.load_faiss_index(EMBEDDING_COLUMN, str(Path(output_dir) / INDEX_FILE))
    params_path = Path(output_dir) / INDEX_PARAMS_FILE
    params = json.loads(params_path.read_text()) if params_path.exists() else dict(kind="flat")
    _apply_search_params(gallery.get_index(EMBEDDING_COLUMN).faiss_index, params)
    gallery.get_index(EMBEDDING_COLUMN).parameters = params
    return gallery


@torch.inference_mode()
def search_gallery(gallery: Dataset, model: STOPModel, processor: STOPProcessor, query: str, k: int = 5):
    """`(scores, examples)` of the k videos nearest to a text query (cosine similarity)."""
    inputs = processor(text=[query], return_tensors="pt", padding=True)
    text = torch.nn.functional.normalize(model.get_text_features(inputs["input_ids"].to(model.device)), dim=-1)
    return gallery.get_nearest_examples(EMBEDDING_COLUMN, text[0].float().cpu().numpy(), k=k)


def build_gallery(args) -> Dataset | None:
    accelerator = Accelerator()
    model = STOPModel.from_pretrained(args.model_name_or_path)
    processor = STOPProcessor.from_pretrained(args.model_name_or_path)
    data = load_video_text_dataset(args.dataset_name, video_column=args.video_column, caption_column=None)
    split = data[args.split]
    if args.max_samples:
        split = split.select(range(min(args.max_samples, len(split))))
    dataset = VideoTextDataset(split, processor.video_processor, video_column=args.video_column, caption_column=None)
    embed_shards(
        model, processor, dataset, args.output_dir, args.shard_size, args.batch_size, args.num_workers, accelerator
    )
    if not accelerator.is_main_process:
        return None
    keep = [c for c in split.column_names if c != args.video_column] + [args.video_column]
    gallery = assemble_gallery(split, args.output_dir, math.ceil(len(split) / args.shard_size), keep)
    return add_index(gallery, args.output_dir)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", required=True, help="a STOP folder or Hub id (model + processor)")
    parser.add_argument("--dataset_name", required=True, help="Hub dataset id or local folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--video_column", default="video")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--shard_size", type=int, default=256, help="videos per resumable shard")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_workers", type=int, default=2, help="DataLoader processes decoding videos")
    parser.add_argument("--max_samples", type=int, default=None)
    args = parser.parse_args(argv)
    gallery = build_gallery(args)
    if gallery is not None:
        print(f"indexed {len(gallery)} videos into {args.output_dir}")


if __name__ == "__main__":
    main()
