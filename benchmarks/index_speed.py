"""Gallery search at scale: `training.gallery.add_index` over N clustered, normalised embeddings, queried one at a time
through `datasets` (`gallery.get_nearest_examples`), against exact search.

Embeddings are shaped like real video embeddings, which are clustered (on structureless random vectors no
approximate index keeps its recall): `--clusters` centres on the unit sphere, every embedding a centre plus isotropic
noise, normalised, at cosine ~`--cluster_cosine` to its centre (`--cosine_spread`: a cosine per cluster;
`--size_skew`: Zipf-like cluster sizes). Queries: held-out draws from the same clusters and gallery rows plus noise
(`--perturbed_queries`, `--perturbation`), interleaved. Reported: index build time (train + add + calibration of the
search settings), single-query latency (median, p95), recall@k against exact search (`faiss.knn`) per kind of query,
batched throughput, the exact flat index's single-query latency for comparison, the
index size and the process's resident memory.

    python -m benchmarks.index_speed --num_embeddings 1000000 --output benchmarks/results/index_speed_1m.json
    python -m benchmarks.index_speed --num_embeddings 20000 --exact_max_size 5000   # seconds
    python -m benchmarks.index_speed --summarize benchmarks/results/index_speed_1m.json   # its README paragraph
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def clustered_embeddings(
    n: int,
    dim: int,
    clusters: int,
    cosine: float,
    rng,
    chunk: int = 100_000,
    size_skew: float = 0.0,
    cosine_spread: float = 0.0,
    labels_out: list | None = None,
) -> np.ndarray:
    """n unit vectors around `clusters` random unit centres, each at cosine ~`cosine` to its centre.

    `size_skew` > 0 draws cluster sizes from a Zipf-like law (cluster i weighted (i + 1) ** -size_skew, so 1.0 gives
    a few big clusters and a long tail of small ones); `cosine_spread` > 0 gives every cluster its own cosine, uniform
    in `cosine` +- `cosine_spread` (tight and loose clusters in one gallery). The cluster of every row is appended
    to `labels_out` when given."""
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cosines = np.clip(cosine + cosine_spread * rng.uniform(-1, 1, clusters), 0.05, 0.999)
    sigmas = np.sqrt((1 / cosines**2 - 1) / dim).astype(np.float32)  # |noise|^2 ~ sigma^2 dim => cos ~ cosine
    weights = (np.arange(clusters) + 1.0) ** -size_skew
    weights = rng.permutation(weights / weights.sum())
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        labels = rng.choice(clusters, stop - start, p=weights) if size_skew else rng.integers(0, clusters, stop - start)
        x = centres[labels] + sigmas[labels, None] * rng.standard_normal((stop - start, dim), dtype=np.float32)
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
        if labels_out is not None:
            labels_out.append(labels.astype(np.int32))
    return out


def perturbed_rows(gallery_matrix: np.ndarray, num: int, noise: float, rng) -> np.ndarray:
    """`num` random gallery rows plus isotropic noise of norm `noise`, normalised (near-duplicate queries)."""
    rows = rng.choice(len(gallery_matrix), size=num, replace=False)
    eps = rng.standard_normal((num, gallery_matrix.shape[1])).astype(np.float32)
    x = gallery_matrix[rows] + noise * eps / np.linalg.norm(eps, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def gallery_from_matrix(matrix: np.ndarray):
    """An in-memory `datasets.Dataset` (`id`, `embedding` as a fixed-size float32 list) without per-row copies."""
    import pyarrow as pa
    from datasets import Dataset

    n, dim = matrix.shape
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim)
    return Dataset(pa.table({"id": np.arange(n), "embedding": embedding}))


def latencies_ms(gallery, queries: np.ndarray, k: int) -> tuple[list[float], np.ndarray]:
    times, found = [], []
    for q in queries:
        start = time.perf_counter()
        _, examples = gallery.get_nearest_examples("embedding", q, k=k)
        times.append(1000 * (time.perf_counter() - start))
        found.append(examples["id"])
    return times, np.asarray(found)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num_embeddings", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=10_000, help="cluster centres of the synthetic embeddings")
    parser.add_argument("--cluster_cosine", type=float, default=0.75, help="cosine of an embedding to its centre")
    parser.add_argument(
        "--size_skew", type=float, default=0.0, help="Zipf exponent of the cluster sizes (0: equal sizes on average)"
    )
    parser.add_argument(
        "--cosine_spread", type=float, default=0.0, help="per-cluster cosine uniform in cluster_cosine +- this"
    )
    parser.add_argument("--queries", type=int, default=500, help="fresh draws from the gallery's clusters")
    parser.add_argument("--perturbed_queries", type=int, default=500, help="gallery rows plus noise")
    parser.add_argument("--perturbation", type=float, default=0.25, help="norm of the noise of a perturbed query")
    parser.add_argument("--exact_queries", type=int, default=30, help="single queries timed on the exact flat index")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--kind", default="auto", choices=("auto", "flat", "ivfpq", "ivf", "hnsw"))
    parser.add_argument("--exact_max_size", type=int, default=None, help="add_index's flat/approximate threshold")
    parser.add_argument(
        "--search_threads",
        type=int,
        default=1,
        help="OpenMP threads for the single queries (1: on a shared machine a second thread only waits)",
    )
    parser.add_argument("--save", action="store_true", help="also time saving and loading the gallery's index")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON file for the results")
    parser.add_argument("--summarize", nargs="+", default=None, help="print README paragraphs of result files; no run")
    args = parser.parse_args(argv)
    if args.summarize:
        for path in args.summarize:
            result = json.loads(Path(path).read_text())
            print(summary_markdown(dict(result, output=path)) + "\n")
        return

    import faiss

    from training.gallery import EXACT_MAX_SIZE, add_index, index_parameters

    rng = np.random.default_rng(args.seed)
    rss0 = rss_mib()
    start = time.perf_counter()
    labels = []
    data = clustered_embeddings(
        args.num_embeddings + args.queries,
        args.dim,
        args.clusters,
        args.cluster_cosine,
        rng,
        size_skew=args.size_skew,
        cosine_spread=args.cosine_spread,
        labels_out=labels,
    )
    labels = np.concatenate(labels)[: args.num_embeddings]
    fresh = data[args.num_embeddings :].copy()
    gallery = gallery_from_matrix(data[: args.num_embeddings])
    del data
    column = gallery.data.column("embedding").chunk(0)
    emb = column.flatten().to_numpy().reshape(len(column), args.dim)  # the table's own buffer, for exact search
    perturbed = perturbed_rows(emb, args.perturbed_queries, args.perturbation, np.random.default_rng(args.seed + 1))
    queries = np.concatenate([fresh, perturbed])
    order = np.random.default_rng(args.seed + 2).permutation(len(queries))  # fresh and perturbed interleaved
    queries, is_fresh = queries[order], (order < len(fresh))
    make_s = time.perf_counter() - start
    rss_data = rss_mib()

    start = time.perf_counter()
    gallery = add_index(gallery, kind=args.kind, exact_max_size=args.exact_max_size or EXACT_MAX_SIZE, seed=args.seed)
    build_s = time.perf_counter() - start
    rss_index = rss_mib()
    index = gallery.get_index("embedding").faiss_index
    index_bytes = faiss.serialize_index(index).nbytes

    exact_ids = faiss.knn(queries, emb, args.k, metric=faiss.METRIC_INNER_PRODUCT)[1]
    build_threads = faiss.omp_get_max_threads()
    if args.search_threads:
        faiss.omp_set_num_threads(args.search_threads)
    gallery.get_nearest_examples("embedding", queries[0], k=args.k)  # warm-up
    times, found = latencies_ms(gallery, queries, args.k)
    faiss.omp_set_num_threads(build_threads)
    per_query = np.array([len(set(f) & set(e)) / args.k for f, e in zip(found, exact_ids)])
    recall = float(per_query.mean())
    recalls = dict(
        fresh=round(float(per_query[is_fresh].mean()), 4) if is_fresh.any() else None,
        perturbed=round(float(per_query[~is_fresh].mean()), 4) if (~is_fresh).any() else None,
    )
    start = time.perf_counter()
    gallery.get_nearest_examples_batch("embedding", queries, k=args.k)
    batch_s = time.perf_counter() - start

    saved = None
    if args.save:
        from training.gallery import load_gallery, save_gallery

        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            gallery = save_gallery(gallery, tmp)
            save_s = time.perf_counter() - start
            start = time.perf_counter()
            loaded = load_gallery(tmp)
            load_s = time.perf_counter() - start
            same = np.array_equal(latencies_ms(loaded, queries[:20], args.k)[1], found[:20])
            saved = dict(save_s=round(save_s, 2), load_s=round(load_s, 2), same_results_after_load=bool(same))
            del loaded

    exact_ms = None
    if args.exact_queries and index_parameters(gallery)["kind"] != "flat":
        flat = faiss.IndexFlatIP(args.dim)
        flat.add(emb)
        exact_times = []
        if args.search_threads:
            faiss.omp_set_num_threads(args.search_threads)
        for q in queries[: args.exact_queries]:
            start = time.perf_counter()
            flat.search(q[None], args.k)
            exact_times.append(1000 * (time.perf_counter() - start))
        faiss.omp_set_num_threads(build_threads)
        exact_ms = dict(
            median=round(float(np.median(exact_times)), 2), p95=round(float(np.percentile(exact_times, 95)), 2)
        )
        del flat

    result = dict(
        command="python -m benchmarks.index_speed " + " ".join(sys.argv[1:] if argv is None else argv),
        num_embeddings=args.num_embeddings,
        dim=args.dim,
        data=dict(
            clusters=args.clusters,
            cluster_cosine=args.cluster_cosine,
            size_skew=args.size_skew,
            cosine_spread=args.cosine_spread,
            cluster_sizes=cluster_size_summary(labels, args.clusters),
            queries=f"{args.queries} held-out draws from the same clusters, {args.perturbed_queries} gallery rows "
            f"plus noise of norm {args.perturbation}, interleaved",
            generate_s=round(make_s, 1),
        ),
        k=args.k,
        index=index_parameters(gallery),
        faiss=faiss.__version__,
        threads=dict(build=build_threads, single_queries=args.search_threads or build_threads),
        cpu_count=os.cpu_count(),
        loadavg=list(os.getloadavg()),
        build_s=round(build_s, 1),
        query_latency_ms_median=round(float(np.median(times)), 2),
        query_latency_ms_p95=round(float(np.percentile(times, 95)), 2),
        recall_at_k=round(recall, 4),
        recall_at_k_by_query=recalls,
        recall_at_k_min_over_queries=round(float(per_query.min()), 2),
        batched_queries_per_s=round(len(queries) / batch_s, 1),
        exact_flat_single_query_ms=exact_ms,
        index_size_mib=round(index_bytes / 2**20, 1),
        rss_mib=dict(
            before=round(rss0), with_gallery=round(rss_data), with_index=round(rss_index), peak=round(rss_peak_mib())
        ),
        save_load=saved,
        targets=dict(p95_ms_max=15, recall_min=0.95, build_s_max=300),
    )
    worst = min(r for r in recalls.values() if r is not None)
    result["targets_met"] = dict(p95=result["query_latency_ms_p95"] <= 15, recall=worst >= 0.95, build=build_s <= 300)
    print(json.dumps(result, indent=1))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")


def cluster_size_summary(labels: np.ndarray, clusters: int) -> dict:
    """Smallest, median and largest cluster size of the gallery, and how many clusters hold half its rows."""
    counts = np.sort(np.bincount(labels, minlength=clusters))[::-1]
    half = int(np.searchsorted(np.cumsum(counts), len(labels) / 2) + 1)
    return dict(
        smallest=int(counts[-1]), median=int(np.median(counts)), largest=int(counts[0]), clusters_with_half=half
    )


def summary_markdown(result: dict) -> str:
    """One README paragraph of a result file."""
    d, ix, cal = result["data"], result["index"], result["index"].get("calibration", {})
    sizes = d.get("cluster_sizes") or {}
    structure = f"{d['clusters']} clusters, cosine {d['cluster_cosine']} to their centre"
    if d.get("cosine_spread"):
        structure += f" +- {d['cosine_spread']} per cluster"
    if sizes:
        structure += f", sizes {sizes['smallest']}..{sizes['largest']} (median {sizes['median']})"
    if ix["kind"] == "ivfpq":
        index = (
            f"`ivfpq`: nlist={ix['nlist']} (spherical k-means on {ix['train_size']}), PQ{ix['pq_m']}x{ix['pq_bits']} fast-scan codes of "
            f"the {'residuals' if ix['by_residual'] else 'vectors'} (mean squared residual {ix.get('mean_squared_residual')}), "
            f"nprobe={ix['nprobe']}, k_factor={ix['k_factor']}"
        )
    else:
        index = f"`{ix['kind']}`" + (f", nprobe={ix['nprobe']}" if "nprobe" in ix else "")
    by = result.get("recall_at_k_by_query") or {}
    met = result["targets_met"]
    text = (
        f"{structure} (`{Path(result.get('output', '')).name}`, load {min(result['loadavg']):.0f}-{max(result['loadavg']):.0f}): "
        f"{index}; calibration recall@10 {cal.get('recall_at_10_left_out')} (left-out rows) / "
        f"{cal.get('recall_at_10_perturbed')} (perturbed rows). Single query median {result['query_latency_ms_median']} ms, "
        f"**p95 {result['query_latency_ms_p95']} ms** ({'met' if met['p95'] else 'not met'}), **recall@10 "
        f"{by.get('fresh')} fresh / {by.get('perturbed')} perturbed** ({'met' if met['recall'] else 'not met'}), "
        f"**build {result['build_s']} s** ({'met' if met['build'] else 'not met'}; "
        + ", ".join(f"{k[:-2]} {v} s" for k, v in ix.get("build_seconds", {}).items())
        + f"); exact flat search {result['exact_flat_single_query_ms']['median']} ms per query; index "
        f"{result['index_size_mib']} MiB, resident {result['rss_mib']['with_gallery']} MiB with the gallery, "
        f"{result['rss_mib']['with_index']} MiB with the index, peak {result['rss_mib']['peak']} MiB"
    )
    if result.get("save_load"):
        sl = result["save_load"]
        text += f"; save {sl['save_s']} s, load {sl['load_s']} s, same results after loading: {sl['same_results_after_load']}"
    return text + "."


def rss_peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    main()
