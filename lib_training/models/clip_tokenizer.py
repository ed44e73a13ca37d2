"""CLIP's tokenizer, built offline from CLIP's BPE file (bundled in `clip_bpe/`, MIT, see its LICENSE).

A single-file checkpoint carries no tokenizer and nothing may be downloaded, so the
CLI builds `vocab.json` + `merges.txt` from `bpe_simple_vocab_16e6.txt.gz` (the same
vocabulary SD1 and SD2 use) once, into a cache folder. The file ships with the package so
`pip install .` needs no open_clip; open_clip's or clip's copy is the fallback.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

from ..cache_dir import user_cache_dir
from ..errors import CheckpointError
from ..fileio import atomic_write_text

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_PACKAGES_WITH_BPE = ("open_clip", "clip")
_NUM_MERGES = 49152 - 256 - 2


BUNDLED_BPE = Path(__file__).parent / "clip_bpe" / BPE_FILE


def find_bpe_file() -> Path:
    if BUNDLED_BPE.is_file():
        return BUNDLED_BPE
    for package in _PACKAGES_WITH_BPE:
        spec = importlib.util.find_spec(package)  # finds the folder without importing it
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(folder) / BPE_FILE
            if candidate.is_file():
                return candidate
    raise CheckpointError(
        f"CLIP's vocabulary ({BPE_FILE}) was not found. Install it with "
        "`pip install --no-deps open-clip-torch`, or pass a folder with vocab.json and merges.txt "
        "as model.tokenizer_dir."
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def write_tokenizer_files(bpe_file: Path, folder: Path) -> Path:
    """vocab.json + merges.txt in the layout transformers' CLIPTokenizer reads."""
    lines = gzip.open(bpe_file, "rt", encoding="utf-8").read().split("\n")[1:_NUM_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    atomic_write_text(folder / "vocab.json", json.dumps({token: i for i, token in enumerate(vocab)}))
    atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return folder


def default_cache_dir() -> Path:
    return user_cache_dir("clip_tokenizer")


@lru_cache(maxsize=4)
def load_clip_tokenizer(tokenizer_dir: str = ""):
    from transformers import CLIPTokenizer

    folder = Path(tokenizer_dir) if tokenizer_dir else default_cache_dir()
    if not (folder / "vocab.json").is_file():
        if tokenizer_dir:
            raise CheckpointError(f"{folder} has no vocab.json/merges.txt. Point model.tokenizer_dir at a CLIP tokenizer folder.")
        write_tokenizer_files(find_bpe_file(), folder)
    # from_pretrained, not the constructor: transformers 5 ignores vocab_file/merges_file
    # in the constructor and builds an empty vocabulary.
    return CLIPTokenizer.from_pretrained(str(folder), pad_token="<|endoftext|>")  # SD pads with the end token
