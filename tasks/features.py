"""
Token ids for sentence and sentence-pair tasks: [CLS] a [SEP] (b [SEP]), padded into tensors.
"""
import torch


def special_id(tokenizer, name, default):
    i = tokenizer.token_to_id(name)
    return default if i is None else i


def encode(tokenizer, examples, max_len=128) -> dict:
    """[CLS] a [SEP] (b [SEP]) with token types 0/1, cut to max_len (longest sequence first), padded to the
    longest. -> input_ids, attention_mask, token_type_ids (N, L) and labels (N,) unless the examples have
    none."""
    for i, e in enumerate(examples):
        if not isinstance(e.text_a, str) or not isinstance(e.text_b, (str, type(None))):
            raise TypeError(f"example {i}: text_a must be a string and text_b a string or None, got "
                            f"{e!r:.120}")
    saved_trunc, saved_pad = tokenizer.truncation, tokenizer.padding
    tokenizer.enable_truncation(max_len)
    tokenizer.no_padding()
    try:
        encs = tokenizer.encode_batch([e.text_a if e.text_b is None else (e.text_a,
                                                                          e.text_b) for e in examples])
    finally:
        tokenizer.no_truncation() if saved_trunc is None else tokenizer.enable_truncation(**saved_trunc)
        if saved_pad is not None:
            tokenizer.enable_padding(**{k: v for k, v in saved_pad.items() if k != "length" or v})
    L = max((len(e.ids) for e in encs), default=1)
    out = {k: torch.zeros(len(encs), L, dtype=torch.long) for k in ("input_ids", "attention_mask",
                                                                    "token_type_ids")}
    out["input_ids"].fill_(special_id(tokenizer, "[PAD]", 0))
    for i, e in enumerate(encs):
        n = len(e.ids)
        out["input_ids"][i, :n], out["token_type_ids"][i, :n] = torch.tensor(e.ids), torch.tensor(e.type_ids)
        out["attention_mask"][i, :n] = 1
    labels = [e.label for e in examples]
    if labels and all(y is not None for y in labels):
        out["labels"] = torch.tensor(labels,
                                     dtype=torch.float if isinstance(labels[0], float) else torch.long)
    return out
