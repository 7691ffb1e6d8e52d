"""Gallery search speed: FAISS (through `datasets`) query latency over N random normalised embeddings.

    python -m benchmarks.index_speed --num_embeddings 100000 --dim 512 --queries 200
"""

import argparse
import json
import time

import numpy as np
from datasets import Dataset

from training.gallery import add_index


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_embeddings", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--output", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((args.num_embeddings, args.dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    gallery = Dataset.from_dict({"id": np.arange(args.num_embeddings), "embedding": emb})
    start = time.perf_counter()
    add_index(gallery)
    build_s = time.perf_counter() - start
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    latencies = []
    for q in queries:
        start = time.perf_counter()
        gallery.get_nearest_examples("embedding", q / np.linalg.norm(q), k=args.k)
        latencies.append(time.perf_counter() - start)
    start = time.perf_counter()
    gallery.get_nearest_examples_batch("embedding", queries / np.linalg.norm(queries, axis=1, keepdims=True), k=args.k)
    batch_s = time.perf_counter() - start
    result = {
        "num_embeddings": args.num_embeddings,
        "dim": args.dim,
        "k": args.k,
        "index": "faiss IndexFlatIP (exact) via datasets.add_faiss_index",
        "build_s": round(build_s, 3),
        "query_latency_ms_median": round(1000 * float(np.median(latencies)), 2),
        "query_latency_ms_p95": round(1000 * float(np.percentile(latencies, 95)), 2),
        "batched_queries_per_s": round(args.queries / batch_s, 1),
    }
    print(json.dumps(result, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
