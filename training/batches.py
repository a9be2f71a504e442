"""
The host's side of a step: each step's micro-batches masked and counted on the host (in train.py's background
thread), copied to the device, and the multiply-adds of a step (for the ETA and the MFU).
"""
import data
from training.setup import Run


def step_macs(cfg, model_cfg, teacher_cfg=None, head_only=False, mask_rate=0.15) -> float:
    """Multiply-adds of one optimizer step of batch_size x max_len tokens, by a count of its matrix products
    (for the ETA, where only ratios between steps and stages matter): backward costs twice the forward; the
    MLM head (transform and vocabulary projection) runs on the masked positions, and in distillation with
    ce_positions=all on every one; head-only steps run the encoder forward only."""
    def encoder(c):  # per token: Q, K, V, output, the feed-forward, and QK^T, AV
        d = c.hidden_size
        return c.num_layers * (4 * d * d + 2 * d * c.intermediate_size + 2 * cfg.max_len * d)

    def head(c):
        return c.hidden_size ** 2 + c.hidden_size * c.vocab_size
    if cfg.mode == "mlm":
        per_token = (encoder(model_cfg) + 3 * mask_rate * head(model_cfg) if head_only
                     else 3 * (encoder(model_cfg) + mask_rate * head(model_cfg)))
    else:
        rows = 1.0 if cfg.ce_positions == "all" else mask_rate
        per_token = encoder(teacher_cfg) + rows * head(teacher_cfg) + 3 * (encoder(model_cfg)
                                                                            + rows * head(model_cfg))
    return per_token * cfg.batch_size * cfg.max_len


def micro_batches(loader):
    while True:
        yield from loader


def host_batches(run: Run, batches) -> list:
    """One step's micro-batches made on the host (in train's background thread): dynamic masking
    (data.mask_tokens) on the CPU, each micro-batch's mask drawn from (seed, epoch, batch index), so a batch
    gets the same mask whatever the device and world size and across resumes; and what the step needs to know
    without asking the device: each micro-batch's (real, masked) token counts and whether it has padding.
    -> [(input_ids, attention_mask, labels, counts, padded)], pinned when the device is a GPU (fast,
    asynchronous copies)."""
    special = [v for k, v in run.shards.special.items() if k != "mask"]
    out = []
    for b in batches:
        ids, am = b["input_ids"], b["attention_mask"]  # (batch, len), on the host
        g = data.mask_generator(run.cfg.seed, b["epoch"], b["index"])
        masked_ids, labels = data.mask_tokens(ids, am, mask_id=run.shards.special["mask"],
                                              vocab_size=run.shards.vocab_size, special_ids=special,
                                              generator=g, weights=run.mask_weights)
        tensors = [masked_ids, am, labels]
        if run.device.type == "cuda":
            tensors = [t.pin_memory() for t in tensors]
        out.append((*tensors, token_counts(am, labels), b["padded"]))
    return out


def on_device(run: Run, host: list) -> tuple:
    """A step's micro-batches from host_batches on the device (copies that do not wait), with their host
    facts: ([(input_ids, attention_mask, labels)], padded, counts)."""
    batches = [tuple(t.to(run.device, non_blocking=True) for t in b[:3]) for b in host]
    return batches, [b[4] for b in host], [b[3] for b in host]
def token_counts(attention_mask, labels) -> tuple:
    """(real tokens, masked tokens) of a micro-batch, as host numbers: free for tensors on the CPU, a wait for
    the device for tensors on a GPU (the loader counts them on the host instead: host_batches)."""
    return int(attention_mask.sum()), int((labels != -100).sum())
