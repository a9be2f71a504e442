"""Fixtures and helpers shared by the test_train tests."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from corpus import prepare
from data import TokenData, mask_tokens
from machinery.hf import load_pretrained, save_pretrained
import train as T
from model import Bert, BertConfig, student_from_teacher



ROOT = Path(__file__).resolve().parents[1]


CORPUS = "\n\n".join(
    f"Document {i}. The {w} sat on the mat while the {v} watched from the window, and nobody said a word about "
    f"the {w} or the {v} until evening came and the lamps were lit along the quiet street number {i}."
    for i, (w, v) in enumerate([(a, b) for a in ["cat", "dog", "bird", "fox", "owl", "hen"] for b in
                                ["child", "farmer", "teacher", "sailor", "baker", "doctor"]]))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A prepared corpus and a tiny teacher (no dropout, so runs on different rank counts are comparable)."""
    root = tmp_path_factory.mktemp("train")
    (root / "corpus.txt").write_text(CORPUS * 3)
    prepare([str(root / "corpus.txt")], root / "data", vocab_size=200, valid_fraction=0.1)
    data = TokenData(root / "data")
    torch.manual_seed(0)
    teacher = Bert(BertConfig(vocab_size=data.vocab_size, hidden_size=32, num_layers=4, num_heads=2,
                              intermediate_size=64, max_position=64, dropout=0.0, attention_dropout=0.0))
    save_pretrained(teacher, root / "teacher", tokenizer_files=[root / "data" / "vocab.txt"])
    noisy = Bert(BertConfig(vocab_size=data.vocab_size, hidden_size=32, num_layers=4, num_heads=2,
                            intermediate_size=64, max_position=64))  # with dropout, to test RNG restore
    save_pretrained(noisy, root / "teacher-dropout", tokenizer_files=[root / "data" / "vocab.txt"])
    return root, data


def args(root, out, **kw):
    base = dict(preset="tiny", data=root / "data", teacher=root / "teacher", out_dir=out, max_steps=4, max_len=32,
                dtype="float32",  # --dtype=auto probes the CPU: runs compared must not depend on it
                micro_batch=4, batch_size=8)
    return [f"--{k}={v}" for k, v in {**base, **kw}.items()]


def batch(data, B=6, Lmax=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, data.vocab_size, (B, Lmax), generator=g)
    lengths = torch.randint(8, Lmax + 1, (B,), generator=g)
    am = (torch.arange(Lmax)[None] < lengths[:, None]).long()
    ids[:, 0] = data.special["cls"]
    ids[torch.arange(B), lengths - 1] = data.special["sep"]
    ids[am == 0] = data.special["pad"]
    masked, labels = mask_tokens(ids, am, mask_id=data.special["mask"], vocab_size=data.vocab_size,
                                   special_ids=data.special, generator=g, mlm_prob=0.3)
    return masked, am, labels


def pair(setup):
    root, data = setup
    teacher = load_pretrained(root / "teacher").requires_grad_(False)
    student = student_from_teacher(teacher)
    cfg = T.TrainConfig()
    return teacher, student, T.Objective(student, teacher, cfg), cfg


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def final_student(out):
    ckpt = sorted(Path(out).glob("ckpt-*.pt"))[-1]
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bertmodel_folder(root, data, tmp_path):
    """A BertModel checkpoint (as MiniLM's): a BERT with a pooler, saved without its MLM head."""
    torch.manual_seed(1)
    src = Bert(BertConfig(vocab_size=data.vocab_size, hidden_size=32, num_layers=2, num_heads=2,
                          intermediate_size=64, max_position=64, pooler=True))
    save_pretrained(src, tmp_path / "bertmodel-src", tokenizer_files=[root / "data" / "vocab.txt"])
    from safetensors.torch import load_file, save_file
    folder = tmp_path / "bertmodel"
    folder.mkdir()
    sd = load_file(str(tmp_path / "bertmodel-src" / "model.safetensors"))
    save_file({k[len("bert."):]: v for k, v in sd.items() if k.startswith("bert.")}, str(folder / "model.safetensors"))
    cfg = json.loads((tmp_path / "bertmodel-src" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "architectures": ["BertModel"]}))
    (folder / "vocab.txt").write_text((root / "data" / "vocab.txt").read_text())
    return folder


def ckpt_names(out):
    return sorted(p.name for p in Path(out).glob("ckpt-*"))


def damage(path, how):
    raw = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(raw[:len(raw) // 2]))
    else:  # 4 KB overwritten in the middle (the zip container still reads: only the checksum can tell)
        mid = len(raw) // 2
        raw[mid:mid + 4096] = bytes(4096)
        path.write_bytes(bytes(raw))


def launch_env():
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def torchrun(*flags, script="train.py", argv=()):
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *flags, script, *map(str, argv)],
                            cwd=ROOT, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(proc, timeout=420):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"torchrun hung:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


def max_param_diff(a, b):
    return max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])


SIGNAL_RANK = """
import os, signal, sys
sys.path.insert(0, {root!r})
import train as T
from machinery.hf import load_pretrained, save_pretrained
real_evaluate = T.evaluate

def evaluate(*a, **k):  # rank {rank}: SIGTERM during the first evaluation (after step 2)
    out = real_evaluate(*a, **k)
    if os.environ["RANK"] == "{rank}" and not os.path.exists({flag!r}):
        open({flag!r}, "w").close()
        os.kill(os.getpid(), signal.SIGTERM)
    return out
T.evaluate = evaluate
T.train(T.parse_args(sys.argv[1:]))
"""


def step_inputs(setup, tmp_path, **kw):
    """A built run (train.build) and two steps' micro-batches made on the host as train.py makes them."""
    root, _ = setup
    run = T.build(T.parse_args(args(root, tmp_path / "out", **kw)))
    stream = T.micro_batches(run.loader)
    return run, [T.host_batches(run, [next(stream) for _ in range(run.accum)]) for _ in range(2)]


def ranks_in_their_folders(tmp_path, argv, world=2, timeout=150, name="run"):
    """`world` gloo ranks launched as torchrun would (RANK, WORLD_SIZE, MASTER_ADDR/PORT), each in its own
    working directory tmp_path/node<r>: a relative --out_dir is then a different folder on each rank, as on
    machines without a shared file system. -> (return codes, logs); ranks still running after `timeout` s
    (a hang) are killed and get None."""
    port, procs = free_port(), []
    for rank in range(world):
        (tmp_path / f"node{rank}").mkdir(exist_ok=True)
        env = {**launch_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        log = open(tmp_path / f"{name}-rank{rank}.log", "w")
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, argv)],
                                      cwd=tmp_path / f"node{rank}", env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    deadline = time.time() + timeout
    while time.time() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.5)
    codes = [p.poll() for p in procs]
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    return codes, [(tmp_path / f"{name}-rank{r}.log").read_text() for r in range(world)]


def rank_batches(data, world, rank):
    from data import Batches
    return Batches(data, "train", 32, 2, seed=0, rank=rank, world_size=world)
