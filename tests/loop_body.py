"""The body of train.train's loop up to its log line, as it is written there, for the tests that run single
steps (the waits for the device, --compile, float16, tests/gpu_smoke.py)."""
import train as T


def one_step(run, host, skipped=None, step=0, stop=None):
    """One optimizer step on host_batches' micro-batches: (loss parts summed over the micro-steps, the gradient
    norm, the step's real tokens, whether a rank was asked to stop). skipped: a train.NonFinite; stop: a
    logs.StopSignal (one is made, and its handlers restored, when none is given)."""
    own = stop is None
    skipped, stop = skipped or T.NonFinite(run.device), stop or T.StopSignal()
    try:
        lr = T.lr_at(step, run.total, run.cfg)
        run.objective.head_only = step < run.cfg.head_steps
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        batches, padded, counts = T.on_device(run, host)
        sums, finite, n_real = T.forward_backward(run.wrapped, run.teacher, batches, run.cfg, run.autocast,
                                                  run.scaler, padded=padded, counts=counts)
        norm, skip = T.optimizer_step(run, T.every_rank(run, finite))
        skipped.add(skip)
        return sums, norm, n_real, stop.anywhere(run.ddp)
    finally:
        if own:
            stop.restore()
