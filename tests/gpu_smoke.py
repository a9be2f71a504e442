"""The checks to run the first time a GPU is lent (issue 40): under 6 minutes on one GPU.

    python tests/gpu_smoke.py                            # CUDA: prints a table, writes out/gpu-smoke.json
    python tests/gpu_smoke.py --docs docs/benchmarks.md  # and the table into that page's gpu-smoke region
    python tests/gpu_smoke.py --dry-run                  # the CPU, tiny shapes: the same code (the tests run it)

  step    a CUDA float32 step (TF32 off) equals the CPU step: same weights, same micro-batches (made on the host)
  syncs   one step of train.train's loop (forward_backward, the optimizer step whose skip the device decides, the stop flag)
          in bf16 and fp16, alone and under DDP (one rank, NCCL), and the fused head in bf16 and fp16: no
          operation waits for the device (torch.cuda.set_sync_debug_mode("error"); the dry run counts with
          tests/syncs.SyncCounter); the fused head equals losses.py's formulas (float64 on the CPU)
  resume  torchrun --nproc_per_node=1 train.py (NCCL): 12 steps equal 6 steps + a resume for 6 more
  fp16    a float16 run with the GradScaler: finite losses, the scale in the checkpoint
  speed   tokens/s and MFU of the distillation step of BERT-base (random weights) at 512 tokens in bf16, eager
          and with --compile (the student, the teacher's forward and the soft-target pass compiled)

Each check's result is written to the JSON file as soon as it is known, so a run cut short keeps what it had.
"""
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import data  # noqa: E402
import losses  # noqa: E402
from corpus import prepare  # noqa: E402
import train as T  # noqa: E402
import training.setup as training_setup  # noqa: E402
from machinery import device as devices, files, fused_head  # noqa: E402
from machinery.config import opt, parse_config  # noqa: E402
from machinery.hf import save_pretrained  # noqa: E402
from model import Bert, BertConfig, student_from_teacher  # noqa: E402
from loop_body import one_step  # noqa: E402
from syncs import SyncCounter  # noqa: E402

CHECKS = ("step", "syncs", "resume", "fp16", "speed")
WORDS = ("the cat dog bird fox owl hen sat on a mat while child farmer teacher sailor baker doctor watched from "
         "window and nobody said word about evening came lamps were lit along quiet street").split()


def corpus(n_docs=120, seed=0) -> str:
    """Documents of random sentences over a small vocabulary (a WordPiece of 200 is trained on them)."""
    import random
    r = random.Random(seed)
    return "\n\n".join(" ".join(" ".join(r.choice(WORDS) for _ in range(r.randint(6, 14))).capitalize() + "."
                                for _ in range(r.randint(3, 8))) for _ in range(n_docs))


class Smoke:
    def __init__(self, dev, dry, work, out):
        self.dev, self.dry, self.work, self.out = dev, dry, work, out
        self.results = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (dry run)",
                        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "checks": {}}

    # -------------------------------------------------------------------------------------------- set-up

    def setup(self):
        """A prepared corpus and a small teacher (no dropout), saved as train.py reads them."""
        (self.work / "corpus.txt").write_text(corpus())
        with contextlib.redirect_stderr(open(os.devnull, "w")):
            prepare([str(self.work / "corpus.txt")], self.work / "data", vocab_size=200, valid_fraction=0.1)
        self.tokens = data.TokenData(self.work / "data")
        torch.manual_seed(0)
        teacher = Bert(BertConfig(vocab_size=self.tokens.vocab_size, hidden_size=64, num_layers=4, num_heads=4,
                                  intermediate_size=128, max_position=64, dropout=0.0, attention_dropout=0.0))
        save_pretrained(teacher, self.work / "teacher", tokenizer_files=[self.work / "data" / "vocab.txt"])

    def argv(self, out, **kw):
        base = dict(preset="tiny", data=self.work / "data", teacher=self.work / "teacher", out_dir=out,
                    max_len=64, micro_batch=4, batch_size=8, max_steps=4, dtype="float32", warmup=0.0, lr=1e-3,
                    device=self.dev.type)
        return [f"--{k}={v}" for k, v in {**base, **kw}.items()]

    def run_of(self, name, **kw):
        return T.build(T.parse_args(self.argv(self.work / name, **kw)))

    def host_steps(self, run, n):
        stream = T.micro_batches(run.loader)
        return [T.host_batches(run, [next(stream) for _ in range(run.accum)]) for _ in range(n)]

    # -------------------------------------------------------------------------------------------- checks

    def check_step(self):
        """The device's float32 step against the CPU's: the same host batches into two runs of the same
        weights; the gradients and the parameters after one AdamW step compared."""
        runs = {"cpu": self.run_of("step-cpu", device="cpu"), "device": self.run_of("step-device")}
        start = {k: v.clone() for k, v in runs["cpu"].model.state_dict().items()}
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        host = self.host_steps(runs["cpu"], 1)[0]
        got = {}
        for name, run in runs.items():
            batches, padded, counts = T.on_device(run, host)
            sums, _, _ = T.forward_backward(run.wrapped, run.teacher, batches, run.cfg, padded=padded,
                                            counts=counts)
            grads = {n: p.grad.detach().cpu().clone() for n, p in run.model.named_parameters()
                     if p.grad is not None}
            for group in run.optimizer.param_groups:  # step 1's (step 0's is 0: warm-up)
                group["lr"] = T.lr_at(1, run.total, run.cfg)
            T.optimizer_step(run, torch.ones((), dtype=torch.bool, device=run.device))
            got[name] = ({k: float(v) for k, v in sums.items()}, grads,
                         {k: v.detach().cpu() for k, v in run.model.state_dict().items()})
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        (l_cpu, g_cpu, p_cpu), (l_dev, g_dev, p_dev) = got["cpu"], got["device"]
        loss_rel = max(abs(l_dev[k] - l_cpu[k]) / max(abs(l_cpu[k]), 1e-12) for k in l_cpu)
        grad_rel = max(((g_dev[n] - g).norm() / g.norm().clamp_min(1e-30)).item() for n, g in g_cpu.items())
        param_diff = max((p_dev[k] - v).abs().max().item() for k, v in p_cpu.items())
        moved = max((v - start[k]).abs().max().item() for k, v in p_cpu.items())
        ok = loss_rel < 1e-5 and grad_rel < 1e-4 and param_diff < 1e-5 and moved > 1e-4  # 1% of a step (lr 1e-3)
        return ok, {"loss_rel": loss_rel, "grad_rel": grad_rel, "param_max_abs_diff": param_diff,
                    "moved": moved}, (f"loss {loss_rel:.1e}, gradients {grad_rel:.1e} (relative), parameters "
                                      f"{param_diff:.1e} after one step that moved them by {moved:.1e}")

    def waits(self, fn):
        """(operations that made the host wait for the device while fn ran, fn's result): CUDA's sync debug
        mode raises at the first one; the dry run counts them all on the CPU."""
        if self.dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                return [], fn()
            except RuntimeError as e:
                if "synchroniz" not in str(e):
                    raise
                return [(str(e).splitlines()[0], traceback.extract_tb(e.__traceback__)[-1].name)], None
            finally:
                torch.cuda.set_sync_debug_mode(0)
        with SyncCounter("cpu") as c:
            result = fn()
        return c.found, result

    def check_syncs(self):
        """0 waits in a step of train's loop (bf16, fp16; one process, then DDP with one rank) and in the fused head (bf16,
        fp16), whose values and gradients equal the formulas."""
        out, ok = {}, True
        for dtype in ("bfloat16", "float16"):
            for ddp in (False, True):
                found = self.step_waits(dtype, ddp)
                out[f"train_step {dtype}{' ddp' if ddp else ''}"] = found
                ok &= not found
            found, errors = self.head_waits(getattr(torch, dtype))
            out[f"fused head {dtype}"] = {"waits": found, **errors}
            ok &= not found and errors["loss_rel"] < 0.01 and errors["grad_u_rel"] < 0.02 \
                and errors["grad_w_rel"] < 0.02
        n = sum(len(v["waits"] if isinstance(v, dict) else v) for v in out.values())
        return ok, out, f"{n} waits in {len(out)} runs; fused head vs formulas: " + ", ".join(
            f"{k.split()[-1]} {v['loss_rel']:.1e}/{v['grad_u_rel']:.1e}/{v['grad_w_rel']:.1e}"
            for k, v in out.items() if k.startswith("fused"))

    def step_waits(self, dtype, ddp):
        env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(free_port())} if ddp else {}
        os.environ.update(env)
        try:
            run = self.run_of(f"syncs-{dtype}-{ddp}", dtype=dtype, micro_batch=2, batch_size=4)
            steps = self.host_steps(run, 3)
            skipped, stop = T.NonFinite(run.device), T.StopSignal()
            try:
                one_step(run, steps[0], skipped, stop=stop)  # the first step: DDP's buckets, lazy set-ups
                found = []
                for host in steps[1:]:
                    if ddp and self.dry:  # on the CPU the host's tensors (gloo) cannot be told apart: run only
                        one_step(run, host, skipped, stop=stop)
                        continue
                    found += self.waits(lambda: one_step(run, host, skipped, stop=stop))[0]
                skipped.check(run, len(steps))
            finally:
                stop.restore()
                T.finish(run)
        finally:
            for k in env:
                del os.environ[k]
        return found

    def head_waits(self, dtype):
        """fused_head.head_losses under autocast on the device against the formulas in float64."""
        g = torch.Generator().manual_seed(0)
        N, d, V, T_, D_ce, D_mlm, scale = (96, 32, 300, 2.0, 1e4, 1.5e3, 2.0**12) if self.dry else \
            (2048, 768, 30522, 2.0, 1e5, 1.5e4, 2.0**15)
        h = torch.randn(N, d, generator=g)
        weight, t_weight = torch.randn(V, d, generator=g) * 0.05, torch.randn(V, d, generator=g) * 0.05
        bias, t_hidden = torch.randn(V, generator=g) * 0.1, torch.randn(N, d, generator=g)
        n_masked = N // 7
        labels = torch.randint(0, V, (n_masked,), generator=g)  # the first n_masked rows are the masked ones
        dev = self.dev
        hd, wd, bd = (x.clone().to(dev).requires_grad_(True) for x in (h, weight, bias))
        td, twd, ld = t_hidden.to(dev), t_weight.to(dev, dtype), labels.to(dev)

        def run():
            with torch.autocast(dev.type, dtype=dtype):
                loss, *_ = fused_head.head_losses(hd, wd, bd, teacher_hidden=td,
                                                  teacher_head=lambda x: F.linear(x.to(dtype), twd),
                                                  labels=ld, temperature=T_, w_ce=5.0 / D_ce, w_mlm=2.0 / D_mlm,
                                                  chunk_size=1024 if not self.dry else 32)
            (loss * scale).backward()
            return loss
        run()  # the first call probes torch.mm's out_dtype
        for x in (hd, wd, bd):
            x.grad = None
        found, loss = self.waits(run)
        h64, w64, b64 = (x.detach().double().requires_grad_(True) for x in (h, weight, bias))
        s = F.linear(h64, w64, b64)
        t = F.linear(t_hidden.double(), t_weight.to(dtype).double())
        want = 5.0 * losses.soft_target_loss(s, t, T_, denom=D_ce) \
            + 2.0 * F.cross_entropy(s[:n_masked], labels, reduction="sum") / D_mlm
        want.backward()
        rel = lambda a, b: ((a.detach().cpu().double() - b).norm() / b.norm()).item()  # noqa: E731
        if loss is None:
            return found, {"loss_rel": float("nan"), "grad_u_rel": float("nan"), "grad_w_rel": float("nan")}
        return found, {"loss_rel": abs(loss.item() - want.item()) / abs(want.item()),
                       "grad_u_rel": rel(hd.grad / scale, h64.grad), "grad_w_rel": rel(wd.grad / scale, w64.grad)}

    def check_resume(self):
        """torchrun, one rank (NCCL on a GPU, gloo in the dry run): 12 steps, then the same run stopped after 6
        (its step-12 checkpoint removed) and resumed: the final parameters compared."""
        out = self.work / "resume"
        argv = self.argv(out, max_steps=12, save_every=6, keep_last=5, dtype="float32")
        first = torchrun(argv)
        full = torch.load(out / "ckpt-0000012.pt", map_location="cpu", weights_only=True)
        (out / "ckpt-0000012.pt").unlink()
        (out / "ckpt-0000012.pt.sha256").unlink()
        second = torchrun(argv + ["--resume=true"])
        resumed = torch.load(out / "ckpt-0000012.pt", map_location="cpu", weights_only=True)
        diff = max((resumed["model"][k] - v).abs().max().item() for k, v in full["model"].items())
        said = "resumed from" in second and "at step 6" in second
        ok = said and resumed["step"] == 12 and diff < 1e-5
        return ok, {"max_abs_diff": diff, "backend": "nccl" if self.dev.type == "cuda" else "gloo",
                    "log_tail": (first + second)[-1500:]}, f"12 steps vs 6 + resume 6: max |difference| {diff:.1e}"

    def check_fp16(self):
        """A float16 run with the GradScaler (train.train, one process): it ends, its losses finite, the scale in
        its checkpoint."""
        out = self.work / "fp16"
        result = T.train(T.parse_args(self.argv(out, dtype="float16", max_steps=8, save_every=8)))
        state = torch.load(out / "ckpt-0000008.pt", map_location="cpu", weights_only=True)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        finite = all(r["total"] == r["total"] and abs(r["total"]) < float("inf") for r in rows if "total" in r)
        scale = float(state["scaler"].get("scale", 0))
        ok = result["step"] == 8 and result["skipped"] < 8 and finite and scale > 0
        return ok, {"skipped": result["skipped"], "scale": scale, "finite": finite}, \
            f"8 steps, {result['skipped']} skipped, scale {scale:g}, losses finite: {finite}"

    def check_speed(self, compile_too=True):
        """Tokens/s and MFU (train.step_macs's count, 2 FLOPs a multiply-add, over device.peak_flops) of one
        distillation step: BERT-base teacher (random weights, bf16), its 6-layer student, B x 512 tokens with
        no padding, 15% masked, L_ce on every token; eager, then compiled as --compile compiles."""
        size = (dict(vocab_size=512, hidden_size=64, num_layers=4, num_heads=4, intermediate_size=128,
                     max_position=64), 2, 64, 1) if self.dry else (dict(), self.batch, 512, 10)
        shape, B, L, steps = size
        out = {}
        for compiled in ((False, True) if compile_too else (False,)):
            torch.manual_seed(0)
            teacher = Bert(BertConfig(**shape))
            student = student_from_teacher(teacher).to(self.dev).train()
            teacher = teacher.to(self.dev, torch.bfloat16).eval().requires_grad_(False)
            cfg = T.TrainConfig(compile=compiled, max_len=L, batch_size=B, micro_batch=B)
            if compiled and self.dry:
                training_setup.COMPILE_OPTIONS["backend"] = "eager"
            wrap = training_setup.compiler(cfg)
            objective = T.Objective(wrap(student), teacher, cfg,
                                    soft_targets=wrap(fused_head._soft_targets) if compiled else None)
            run = SimpleNamespace(cfg=cfg, model=student, optimizer=T.make_optimizer(student, cfg),
                                  scaler=torch.amp.GradScaler(self.dev.type, enabled=False), ddp=False,
                                  device=self.dev)
            g = torch.Generator().manual_seed(1)
            ids = torch.randint(5, teacher.cfg.vocab_size, (B, L), generator=g)
            am = torch.ones_like(ids)
            masked, labels = data.mask_tokens(ids, am, mask_id=4, vocab_size=teacher.cfg.vocab_size,
                                              special_ids=[0, 1, 2, 3], generator=g)
            counts = [T.token_counts(am, labels)]
            batch = [tuple(t.to(self.dev) for t in (masked, am, labels))]
            autocast = torch.autocast(self.dev.type, dtype=torch.bfloat16)

            teacher_fwd = wrap(teacher)

            def step():
                sums, finite, _ = T.forward_backward(objective, teacher_fwd, batch, cfg, autocast,
                                                     padded=[False], counts=counts)
                T.optimizer_step(run, T.every_rank(run, finite))
                return sums
            t0 = time.perf_counter()
            for _ in range(3):  # warm-up (and compilation)
                step()
            sync(self.dev)
            warm = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(steps):
                sums = step()
            sync(self.dev)
            seconds = (time.perf_counter() - t0) / steps
            tps = B * L / seconds
            per_token = T.step_macs(cfg, student.cfg, teacher.cfg) / (cfg.batch_size * cfg.max_len)
            peak = devices.peak_flops(self.dev, torch.bfloat16)
            key = "compiled" if compiled else "eager"
            out[key] = {"batch": B, "length": L, "s_per_step": seconds, "tokens_per_s": tps,
                        "warmup_s": warm, "flops_per_token": 2 * per_token, "peak_flops": peak,
                        "mfu": 2 * per_token * tps / peak if peak else None,
                        "peak_gb": torch.cuda.max_memory_allocated(self.dev) / 2**30 if self.dev.type == "cuda"
                        else None, "losses": {k: float(v) for k, v in sums.items()}}
            self.save_partial("speed", out)
            del student, teacher, objective, run, teacher_fwd
        training_setup.COMPILE_OPTIONS.pop("backend", None)
        ok = all(all(v == v for v in r["losses"].values()) for r in out.values())
        text = "; ".join(f"{k}: {r['tokens_per_s']:,.0f} tok/s" + (f", MFU {r['mfu']:.1%}" if r["mfu"] else "")
                         + f" (warm-up {r['warmup_s']:.0f} s)" for k, r in out.items())
        return ok, out, f"{B} x {L} bf16, " + text

    # -------------------------------------------------------------------------------------------- running

    def save_partial(self, name, value):
        self.results["checks"].setdefault(name, {})["partial"] = value
        self.write()

    def write(self):
        self.out.parent.mkdir(parents=True, exist_ok=True)
        files.write_atomic(self.out, lambda t: t.write_text(json.dumps(self.results, indent=1, default=str)))

    def run(self, names):
        self.setup()
        for name in names:
            t0 = time.time()
            print(f"{name}: ...", flush=True)
            try:
                ok, details, text = getattr(self, f"check_{name}")()
            except Exception as e:  # a check that breaks is a failed check; the others still run
                ok, details, text = False, {"error": traceback.format_exc()[-3000:]}, f"error: {e}"[:300]
            self.results["checks"][name] = {"ok": bool(ok), "seconds": time.time() - t0, "text": text,
                                            "details": details}
            print(f"{name}: {'ok' if ok else 'FAILED'} in {time.time() - t0:.0f} s: {text}", flush=True)
            self.write()
        return self.results


def table(results) -> str:
    lines = [f"{results['device']}, torch {results['torch']}, {results['date']}; `python tests/gpu_smoke.py`", "",
             "| check | result | seconds | measured |", "|---|---|---|---|"]
    for name, r in results["checks"].items():
        lines.append(f"| {name} | {'ok' if r.get('ok') else 'FAILED'} | {r.get('seconds', 0):.0f} | "
                     f"{r.get('text', '')} |")
    return "\n".join(lines) + "\n"


def torchrun(argv, timeout=240) -> str:
    """train.py under torchrun with one rank; its output (an AssertionError when it fails or hangs)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={free_port()}",
           str(ROOT / "train.py"), *map(str, argv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                                                  os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise AssertionError(f"torchrun exited with {r.returncode}:\n{(r.stdout + r.stderr)[-3000:]}")
    return r.stdout + r.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@dataclasses.dataclass
class SmokeConfig:
    dry_run: bool = opt(False, "on the CPU, tiny shapes (no GPU needed)")
    only: str = opt(",".join(CHECKS), f"comma-separated checks: {', '.join(CHECKS)}")
    out: str = opt(str(ROOT / "out" / "gpu-smoke.json"), "the results, as JSON")
    docs: str = opt("", "also write the table into this page's gpu-smoke region")
    batch: int = opt(16, "sequences of 512 tokens in the speed check's step", range=">= 1")


def main(argv=None):
    try:
        a = parse_config(sys.argv[1:] if argv is None else argv, SmokeConfig, doc=__doc__)
    except ValueError as e:
        raise SystemExit(f"gpu_smoke.py: error: {e}") from None
    names = a.only.split(",")
    if set(names) - set(CHECKS):
        raise SystemExit(f"--only={a.only}: checks are {', '.join(CHECKS)}")
    if not a.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: python tests/gpu_smoke.py --dry-run runs the same checks on the CPU")
    dev = torch.device("cpu" if a.dry_run else "cuda:0")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    with tempfile.TemporaryDirectory() as work:
        smoke = Smoke(dev, a.dry_run, Path(work), Path(a.out))
        smoke.batch = a.batch
        results = smoke.run(names)
    print(table(results))
    if a.docs:
        files.write_region(a.docs, "gpu-smoke", table(results))
    failed = [n for n, r in results["checks"].items() if not r["ok"]]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (details in {a.out})")
    return results


if __name__ == "__main__":
    main()
