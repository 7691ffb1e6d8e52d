"""Build OpenAI CLIP's BPE tokenizer without the Hugging Face Hub.

The vocabulary OpenAI released with CLIP (`bpe_simple_vocab_16e6.txt.gz`) ships inside the `open_clip_torch`
wheel on PyPI. This module fetches only that wheel (no dependencies, never installed), reads the one file out
of it, and builds a [`CLIPTokenizer`] that produces exactly the ids of `openai/clip-vit-base-patch32`
("a photo of a cat" -> 49406 320 1125 539 320 2368 49407). Saving that tokenizer next to a model makes the
model folder self-contained.

    python -m training.tokenizer --output_dir DIR     # writes tokenizer.json + tokenizer_config.json
"""

import argparse
import gzip
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from transformers import CLIPTokenizer

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "clip_bpe"
# 49152 BPE ranks = 256 byte tokens + 48894 merges + the two special tokens (as in OpenAI's `SimpleTokenizer`).
NUM_MERGES = 49152 - 256 - 2


def bytes_to_unicode():
    """GPT-2 / CLIP map from the 256 byte values to printable unicode characters, in CLIP's vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    bs = list(printable)
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def fetch_bpe_file(cache_dir=DEFAULT_CACHE):
    """Path to `bpe_simple_vocab_16e6.txt.gz`, downloading the `open_clip_torch` wheel (no deps) if needed."""
    cache_dir = Path(cache_dir)
    target = cache_dir / BPE_FILE_NAME
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary",
            ":all:",
            "open_clip_torch",
            "-d",
            tmp,
        ]
        try:
            subprocess.run(cmd, check=True)
        except subprocess.CalledProcessError as err:
            raise RuntimeError(
                f"could not download the open_clip_torch wheel to read {BPE_FILE_NAME} ({' '.join(cmd)} failed). "
                f"Download it by hand and pass its path with --bpe_path."
            ) from err
        wheel = next(Path(tmp).glob("open_clip_torch-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            target.write_bytes(zf.read(f"open_clip/{BPE_FILE_NAME}"))
    return target


def load_vocab_and_merges(bpe_path):
    """CLIP's `vocab` (token -> id) and `merges` (list of pairs) from the gzipped BPE rank file."""
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    assert len(vocab) == 49408, len(vocab)
    return vocab, merges


def build_clip_tokenizer(bpe_path=None, model_max_length=77):
    """A [`CLIPTokenizer`] identical in its ids to `openai/clip-vit-base-patch32`'s."""
    vocab, merges = load_vocab_and_merges(bpe_path or fetch_bpe_file())
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--bpe_path", default=None, help=f"a local {BPE_FILE_NAME} (default: fetch from PyPI)")
    args = parser.parse_args()
    tokenizer = build_clip_tokenizer(args.bpe_path)
    tokenizer.save_pretrained(args.output_dir)
    print(tokenizer("a photo of a cat").input_ids)


if __name__ == "__main__":
    main()
