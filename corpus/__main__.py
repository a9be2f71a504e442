"""
python -m corpus [inputs ...] [--out=DIR] [--vocab=PATH | --vocab_size=N] [--key=value ...]

Tokenize a corpus into token shards for distillation: files, folders and globs, --hf_dataset (repeatable), or
with neither Python's own documentation. Prints the vocabulary and the splits' sizes as one JSON line.
"""
import json
import sys
from dataclasses import dataclass

from corpus.folder import SETTINGS, prepare
from corpus.sources import PACK_CHARS
from machinery.config import opt, parse_config
from machinery.files import one_line


@dataclass
class CorpusConfig:
    inputs: tuple[str, ...] = opt((), "files, folders, globs (none: Python's own documentation)", positional=True)
    out: str = opt("data/shards", "output folder (train.py's default --data)")
    vocab: str | None = opt(None, "vocab.txt or tokenizer.json (e.g. the teacher's); default: train one")
    vocab_size: int | None = opt(None, f"size of the WordPiece vocabulary to train (default 8192); in "
                                       f"{SETTINGS['vocab_size'][0]}")
    valid_fraction: float = opt(0.005, f"documents held out as the valid split; in {SETTINGS['valid_fraction'][0]}")
    hf_dataset: tuple[str, ...] = opt((), "name[:config] of a HF dataset, or a save_to_disk folder (repeatable)")
    pack_rows: str = opt("auto", "join consecutive rows of a HF dataset into documents: auto (when rows are "
                                 "sentences, as BookCorpus's) | on | off")
    pack_chars: int = opt(PACK_CHARS, "packed document size in characters; >= 1")
    shard_tokens: int = opt(1 << 27, "tokens per shard file; >= 1")
    batch_docs: int = opt(1000, "documents per encoding batch; >= 1")
    seed: int = opt(0, f"seed of the valid split's draw; in {SETTINGS['seed'][0]}")
    overwrite: bool = opt(False, "replace an out folder made from other inputs")


def main(argv=None):
    """The command line; every setting is checked by prepare() itself (check_settings), a bad one in one line."""
    try:
        c = parse_config(list(argv) if argv is not None else sys.argv[1:], CorpusConfig, doc=__doc__)
        if c.vocab is not None and c.vocab_size is not None:
            raise ValueError("--vocab and --vocab_size: give one (a vocabulary to use, or the size of one to train)")
        meta = prepare(c.inputs, c.out, vocab=c.vocab, vocab_size=8192 if c.vocab_size is None else c.vocab_size,
                       valid_fraction=c.valid_fraction, shard_tokens=c.shard_tokens, batch_docs=c.batch_docs,
                       seed=c.seed, hf_datasets=c.hf_dataset, pack_rows=c.pack_rows, pack_chars=c.pack_chars,
                       overwrite=c.overwrite)
    except (OSError, ValueError, ImportError, RuntimeError) as e:  # one line, not a traceback
        raise SystemExit(f"corpus: error: {one_line(e)}") from None
    splits = {s: {k: v for k, v in meta["splits"][s].items() if k != "shards"} for s in meta["splits"]}
    print(json.dumps({k: meta[k] for k in ("vocab_size", "dtype", "vocab_hash")} | splits))


if __name__ == "__main__":
    main()
