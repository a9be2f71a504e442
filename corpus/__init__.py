"""Corpus preparation: raw text -> the token shards data.py reads. Run once, before training.

    sources.py   documents (blank-line separated blocks) from files/folders/globs, HF datasets, or Python's
                 own docs
    shards.py    tokenising in parallel batches, the shard writer: flat binary token shards + document offsets
                 + counts.npy + vocab
    folder.py    prepare(): the whole folder with its meta.json, built aside and renamed (atomic), locked,
                 reused for the same inputs

Command line:  python -m corpus [inputs ...] [--out=DIR] [--vocab=PATH | --vocab_size=N] [--valid_fraction=F]
With no inputs the corpus is Python's own documentation, so everything runs offline.
"""
from corpus.folder import SETTINGS, check_settings, prepare
from corpus.shards import PARTIAL
from corpus.sources import (PACK_CHARS, SkipFile, default_corpus_documents, file_documents, hf_documents,
                            pack_rows, resolve_inputs, sentence_per_row)

__all__ = ["SETTINGS", "check_settings", "prepare", "PARTIAL", "PACK_CHARS", "SkipFile",
           "default_corpus_documents", "file_documents", "hf_documents", "pack_rows", "resolve_inputs",
           "sentence_per_row"]
