"""Gallery indexing: embeddings equal the model's, a resumed run reuses finished shards, FAISS search, bad files."""

import json

import numpy as np
import pytest
import torch

from modeling_stop import STOPProcessor, STOPVideoProcessor
from training.gallery import add_index, load_gallery, main, search_gallery

from .test_processing import tiny_clip_tokenizer
from .tiny import tiny_stop
from .video_factory import moving_frames, write_video


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    model = tiny_stop(num_frames=4, frame_weight_norm="video", clip_kwargs=dict(vocab=len(tiny_clip_tokenizer())))
    processor = STOPProcessor(STOPVideoProcessor(num_frames=4, size=32), tiny_clip_tokenizer(), max_words=8)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    data = root / "data" / "test"
    data.mkdir(parents=True)
    rows = []
    for i in range(5):
        write_video(data / f"v{i}.mp4", moving_frames(6, 32, 32, seed=i))
        rows.append({"file_name": f"v{i}.mp4", "caption": f"clip {i}"})
    (data / "broken.mp4").write_bytes(b"not a video")
    rows.append({"file_name": "broken.mp4", "caption": "broken"})
    (data / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root, model, processor


def _args(root, out):
    return [
        "--model_name_or_path",
        str(root / "model"),
        "--dataset_name",
        str(root / "data"),
        "--split",
        "test",
        "--output_dir",
        str(out),
        "--shard_size",
        "2",
        "--batch_size",
        "2",
        "--num_workers",
        "0",
    ]


def test_index_holds_the_models_embeddings_skips_bad_files_and_searches(setup, tmp_path):
    root, model, processor = setup
    main(_args(root, tmp_path / "index"))
    gallery = load_gallery(tmp_path / "index")
    assert len(gallery) == 5 and "broken" not in gallery["caption"]
    failed = json.loads((tmp_path / "index" / "failed.json").read_text())
    assert len(failed) == 1 and "broken.mp4" in failed[0]
    video = processor(videos=[str(root / "data" / "test" / "v3.mp4")])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.get_video_features(**video), dim=-1)[0].numpy()
    row = gallery["caption"].index("clip 3")
    np.testing.assert_allclose(np.asarray(gallery[row]["embedding"]), expected, atol=1e-5)
    scores, examples = search_gallery(gallery, model, processor, "clip", k=3)
    assert len(scores) == 3 and list(scores) == sorted(scores, reverse=True)
    # the FAISS scores are the cosine similarities of the text to the stored embeddings
    text = processor(text=["clip"])
    with torch.no_grad():
        q = torch.nn.functional.normalize(model.get_text_features(text["input_ids"]), dim=-1)[0].numpy()
    np.testing.assert_allclose(scores[0], np.asarray(examples["embedding"][0]) @ q, atol=1e-4)


def test_an_interrupted_run_reuses_finished_shards(setup, tmp_path):
    root, _, _ = setup
    out = tmp_path / "index"
    main(_args(root, out))
    shards = sorted((out / "shards").glob("*.npz"))
    assert len(shards) == 3
    stamps = {p.name: p.stat().st_mtime_ns for p in shards}
    shards[-1].unlink()  # as if the run had been killed before its last shard
    main(_args(root, out))
    after = {p.name: p.stat().st_mtime_ns for p in sorted((out / "shards").glob("*.npz"))}
    assert set(after) == set(stamps)
    assert all(after[name] == stamps[name] for name in list(stamps)[:-1])  # earlier shards were not recomputed
    assert len(load_gallery(out)) == 5


def test_faiss_index_over_random_embeddings_returns_exact_inner_product_neighbours():
    from datasets import Dataset

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((2000, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    gallery = add_index(Dataset.from_dict({"id": list(range(2000)), "embedding": list(emb)}))
    query = emb[123]
    scores, examples = gallery.get_nearest_examples("embedding", query, k=5)
    assert examples["id"][0] == 123
    np.testing.assert_allclose(scores, np.sort(emb @ query)[::-1][:5], atol=1e-5)


def _clustered(n, dim=32, clusters=40, seed=0):
    """Unit vectors around random centres (cosine ~0.7 to their centre), like real embeddings: clustered."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + 0.18 * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_index_kind_follows_the_gallery_size():
    from training.gallery import EXACT_MAX_SIZE, choose_index

    assert choose_index(1000)["kind"] == "flat"
    assert choose_index(EXACT_MAX_SIZE)["kind"] == "flat"
    big = choose_index(EXACT_MAX_SIZE + 1)
    assert big["kind"] == "ivfpq" and big["nlist"] == int(np.sqrt(EXACT_MAX_SIZE + 1) / 4)
    assert big["train_size"] == 64 * big["nlist"] <= EXACT_MAX_SIZE + 1
    assert big["pq_m"] == 64 and big["pq_bits"] == 4 and big["nprobe"] is None and big["k_factor"] is None
    million = choose_index(1_000_000)
    assert million["nlist"] == 250 and million["train_size"] == 16_000
    assert choose_index(10**6, dim=32)["pq_m"] == 4 and choose_index(10**6, dim=36)["pq_m"] == 4  # divides dim
    assert choose_index(10, exact_max_size=5)["nlist"] == 1  # at least 39 training points per list
    assert choose_index(10**6, kind="ivf")["kind"] == "ivf" and "pq_m" not in choose_index(10**6, kind="ivf")
    assert choose_index(1000, kind="hnsw")["kind"] == "hnsw"
    with pytest.raises(ValueError, match="auto, flat, ivfpq, ivf or hnsw"):
        choose_index(10, kind="pq")


def _fresh_and_perturbed_recall(gallery, emb, fresh, seed=1):
    """recall@10 against exact search of held-out draws and of gallery rows plus noise (norm 0.25)."""
    from training.gallery import recall_at_k

    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((len(fresh), emb.shape[1])).astype(np.float32)
    perturbed = emb[rng.choice(len(emb), len(fresh), replace=False)] + 0.25 * noise / np.linalg.norm(
        noise, axis=1, keepdims=True
    )
    perturbed /= np.linalg.norm(perturbed, axis=1, keepdims=True)
    recalls = []
    for queries in (fresh, perturbed):
        exact = np.argsort(-(queries @ emb.T), axis=1)[:, :10]
        found = np.array([gallery.get_nearest_examples("embedding", q, k=10)[1]["id"] for q in queries])
        recalls.append(recall_at_k(found, exact))
    return recalls, found


def test_approximate_index_above_the_threshold_reaches_recall_and_survives_save_and_load(tmp_path):
    from datasets import Dataset

    from training.gallery import _ivf_part, index_parameters, save_gallery

    data = _clustered(6000)
    emb, queries = data[:5000], data[5000:5100]
    gallery = add_index(Dataset.from_dict({"id": list(range(5000)), "embedding": list(emb)}), exact_max_size=1000)
    params = index_parameters(gallery)
    assert params["kind"] == "ivfpq" and params["nlist"] == 17 and params["num_vectors"] == 5000 and params["dim"] == 32
    index = gallery.get_index("embedding").faiss_index
    assert index.ntotal == 5000 and _ivf_part(index).nlist == 17
    assert _ivf_part(index).nprobe == params["nprobe"] < 17  # coarse clusters: a few lists hold the neighbours
    assert index.k_factor == params["k_factor"] in (16, 32, 64, 128, 256, 512)
    assert params["calibration_recall_at_10"] >= 0.97
    assert min(params["calibration"]["recall_at_10_left_out"], params["calibration"]["recall_at_10_perturbed"]) >= 0.97
    assert set(params["build_seconds"]) == {"train_s", "add_s", "calibrate_s"}
    assert params["mean_squared_residual"] < 1 and params["by_residual"] is True  # the lists follow the clusters
    recalls, found = _fresh_and_perturbed_recall(gallery, emb, queries)
    assert min(recalls) >= 0.95

    save_gallery(gallery, tmp_path / "g")
    assert json.loads((tmp_path / "g" / "embedding.faiss.json").read_text()) == params
    loaded = load_gallery(tmp_path / "g")
    assert index_parameters(loaded) == params
    assert _ivf_part(loaded.get_index("embedding").faiss_index).nprobe == params["nprobe"]
    assert loaded.get_index("embedding").faiss_index.k_factor == params["k_factor"]
    again = _fresh_and_perturbed_recall(loaded, emb, queries)[1]
    np.testing.assert_array_equal(again, found)
    # the gallery still carries its index after saving
    assert gallery.get_nearest_examples("embedding", emb[7], k=10)[1]["id"][0] == 7


def test_clusters_much_finer_than_the_lists_keep_their_recall_without_an_exact_scan():
    """1000 clusters of ~8 in 64-d at cosine 0.6 to their centre: k-means over 22 lists cannot follow them (a
    cluster's members scatter over the lists, so exact IVF lists need nearly all probed), but a full scan of the
    4-bit codes re-ranked exactly still reaches the recall."""
    from datasets import Dataset

    from training.gallery import index_parameters

    rng = np.random.default_rng(3)
    dim, clusters = 64, 1000
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sigma = np.sqrt((1 / 0.6**2 - 1) / dim)
    x = centres[rng.integers(0, clusters, 8100)] + sigma * rng.standard_normal((8100, dim)).astype(np.float32)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    emb, fresh = x[:8000], x[8000:]
    gallery = add_index(Dataset.from_dict({"id": list(range(8000)), "embedding": list(emb)}), exact_max_size=1000)
    params = index_parameters(gallery)
    assert params["kind"] == "ivfpq" and params["nlist"] == 22
    assert params["nprobe"] >= 16  # the partition does not follow the clusters
    assert params["mean_squared_residual"] > 1 and params["by_residual"] is False  # so the codes hold the vectors
    assert params["calibration_recall_at_10"] >= 0.97
    assert min(_fresh_and_perturbed_recall(gallery, emb, fresh)[0]) >= 0.95


def test_add_index_takes_a_saved_dataset_folder_and_writes_the_index_beside_it(tmp_path):
    from datasets import Dataset

    from training.gallery import index_parameters

    emb = _clustered(300)
    Dataset.from_dict({"id": list(range(300)), "embedding": list(emb)}).save_to_disk(str(tmp_path / "dataset"))
    gallery = add_index(tmp_path / "dataset", output_dir=tmp_path)
    assert index_parameters(gallery)["kind"] == "flat" and (tmp_path / "embedding.faiss").exists()
    scores, examples = load_gallery(tmp_path).get_nearest_examples("embedding", emb[7], k=3)
    assert examples["id"][0] == 7
    np.testing.assert_allclose(scores, np.sort(emb @ emb[7])[::-1][:3], atol=1e-5)


def test_add_index_rejects_missing_ragged_and_non_finite_embeddings():
    from datasets import Dataset

    with pytest.raises(ValueError, match="no 'embedding' column"):
        add_index(Dataset.from_dict({"vec": [[1.0, 0.0]]}))
    with pytest.raises(ValueError, match="row 1 of 'embedding' has 3 values"):
        add_index(Dataset.from_dict({"embedding": [[1.0, 0.0], [1.0, 0.0, 0.0]]}))
    with pytest.raises(ValueError, match="row 1 of 'embedding' is not finite"):
        add_index(Dataset.from_dict({"embedding": [[1.0, 0.0], [float("nan"), 0.0]]}))
