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
    return ["--model_name_or_path", str(root / "model"), "--dataset_name", str(root / "data"), "--split", "test",
            "--output_dir", str(out), "--shard_size", "2", "--batch_size", "2", "--num_workers", "0"]


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
