"""
BERT's uncased WordPiece tokenizer, built with the `tokenizers` library: loaded from a vocab.txt or
tokenizer.json (the same ids as transformers' BertTokenizer), trained on a corpus when no teacher vocabulary
is given, and the files transformers' AutoTokenizer reads written beside an exported model.
"""
import hashlib
import json
import shutil
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
WORDPIECE = dict(unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100)  # BERT's


def bert_pipeline(tok):
    """The BERT-uncased text pipeline: clean control chars, split CJK chars, lowercase + strip accents, split
    on whitespace and punctuation; pieces after the first in a word carry the '##' prefix."""
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def tokenizer_file(path):
    """A tokenizer.json or vocab.txt path; a folder is searched for either (tokenizer.json first)."""
    path = Path(path)
    if path.is_dir():
        for name in ("tokenizer.json", "vocab.txt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no tokenizer.json or vocab.txt in {path}")
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return path


def load_tokenizer(path):
    """A `tokenizers.Tokenizer` from a WordPiece vocab.txt (one token per line, id = line number) or a
    tokenizer.json. For a vocab.txt the result gives the same ids as transformers' BertTokenizer(Fast) with
    do_lower_case=True: single = [CLS] A [SEP], pair = [CLS] A [SEP] B [SEP] with token type ids 0 / 1."""
    path = tokenizer_file(path)
    if path.suffix == ".json":
        try:
            return Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust parser's error: a damaged or foreign file
            why = " ".join(str(e).split())[:160]
            raise ValueError(f"{path}: not a readable tokenizer.json ({why})") from None
    try:
        with open(path, encoding="utf-8") as f:
            # a repeated token keeps its last id, like BERT
            vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 vocab.txt (damaged?)") from None
    tok = bert_pipeline(Tokenizer(models.WordPiece(vocab, **WORDPIECE)))
    # "[MASK]" in text stays one token
    tok.add_special_tokens([t for t in SPECIAL_TOKENS.values() if t in vocab])
    ids = special_ids(tok)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["cls"]), ("[SEP]", ids["sep"])])
    return tok


def special_ids(tokenizer):
    """{'pad', 'unk', 'cls', 'sep', 'mask'} -> id; an error names any special token missing from the
    vocabulary."""
    ids = {key: tokenizer.token_to_id(tok) for key, tok in SPECIAL_TOKENS.items()}
    missing = [SPECIAL_TOKENS[k] for k, v in ids.items() if v is None]
    if missing:
        raise ValueError(f"vocabulary lacks the special tokens {missing}")
    return ids


def vocab_hash(tokenizer):
    """sha256 of the vocabulary in id order ('\\n'-joined tokens) and of the text pipeline that turns text
    into those tokens (normaliser, pre-tokenizer, WordPiece settings), so that two tokenizers agree on ids iff
    hashes agree: a tokenizer.json with "lowercase": false gives other ids from the same tokens. BERT-uncased's
    pipeline (that of every vocab.txt) adds nothing: its hash is the tokens' alone, as before the pipeline
    counted."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    text = "\n".join(sorted(vocab, key=vocab.get))
    pipeline = text_pipeline(tokenizer)
    if pipeline != text_pipeline(bert_pipeline(Tokenizer(models.WordPiece({"[UNK]": 0}, **WORDPIECE)))):
        text += "\n" + json.dumps(pipeline, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def text_pipeline(tokenizer) -> dict:
    """What decides the tokens of a text besides the vocabulary: the normaliser, the pre-tokenizer and the
    model's settings (its type, [UNK], the '##' prefix, the longest word), as tokenizer.json describes them."""
    d = json.loads(tokenizer.to_str())
    return {"normalizer": d.get("normalizer"), "pre_tokenizer": d.get("pre_tokenizer"),
            "model": {k: v for k, v in (d.get("model") or {}).items() if k not in ("vocab", "merges")}}


def write_tokenizer_files(source, folder, model_max_length=512):
    """The files transformers' AutoTokenizer reads, written into `folder` beside exported weights, from our
    vocab.txt or tokenizer.json `source`: vocab.txt, tokenizer.json, tokenizer_config.json (BertTokenizer,
    do_lower_case, the special tokens) and special_tokens_map.json."""
    source, folder = tokenizer_file(source), Path(folder)
    tok = load_tokenizer(source)
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.get)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    if source.suffix == ".json":
        shutil.copyfile(source, folder / "tokenizer.json")
    else:
        tok.save(str(folder / "tokenizer.json"))
    special = {f"{k}_token": v for k, v in SPECIAL_TOKENS.items()}
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "tokenize_chinese_chars": True,
              "strip_accents": None, "model_max_length": model_max_length,
              "clean_up_tokenization_spaces": True, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def train_wordpiece(text_iterator, vocab_size, out_path):
    """Train a WordPiece vocabulary (same normalizer and pre-tokenizer as BERT uncased) on an iterator of
    strings, write it as vocab.txt (special tokens first: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4), return
    the tokenizer."""
    tok = bert_pipeline(Tokenizer(models.WordPiece(**WORDPIECE)))
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                        continuing_subword_prefix="##", show_progress=False)
    tok.train_from_iterator(text_iterator, trainer)
    out = Path(out_path)
    out = out / "vocab.txt" if out.is_dir() else out
    vocab = tok.get_vocab()
    out.write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.get)), encoding="utf-8")
    return load_tokenizer(out)
