"""train.py on several ranks (gloo, on the CPU): torchrun equal to one process, signals that stop every rank at the
same step, the full run's launch (8 ranks; 2 nodes of 2), ranks that resume rank 0's checkpoint, another world
size."""
import os
import subprocess
import sys
import time

import pytest
from machinery.hf import load_pretrained
import train as T
from model import student_from_teacher

from train_fixtures import (  # noqa: F401 (fixtures and helpers)
    ROOT, setup, args, batch, final_student, free_port, torchrun, finished, max_param_diff, SIGNAL_RANK,
    ranks_in_their_folders, rank_batches)


@pytest.mark.slow
def test_torchrun_two_ranks_equals_one_process(setup, tmp_path):
    root, _ = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    one = subprocess.run([sys.executable, "train.py", *args(root, tmp_path / "one", max_steps=3)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={free_port()}", "train.py", *args(root, tmp_path / "two", max_steps=3)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 rank(s) x 4 sequences x 1 micro-steps" in two.stdout and "1 rank(s) x 4 sequences x 2" in one.stdout
    a, b = final_student(tmp_path / "one"), final_student(tmp_path / "two")
    worst = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
    moved = max((a["model"][k] - v).abs().max().item() for k, v in
                student_from_teacher(load_pretrained(root / "teacher")).state_dict().items())
    assert worst < 1e-5 and moved > 1e-4, (worst, moved)
    assert len(b["rng"]) == 2  # every rank's RNG state is saved
    # only rank 0 wrote: one metrics file, one exported student
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert sum('"step": 3,' in l and "total" in l for l in lines) == 1


def test_ddp_signal_on_one_rank_stops_every_rank_at_the_same_step(setup, tmp_path):
    """Two gloo ranks (launched here as torchrun would: RANK, WORLD_SIZE, MASTER_ADDR/PORT); a SIGTERM reaches
    rank 1 alone while the ranks evaluate after step 2, i.e. after that step's all-reduced stop flag. Both
    ranks must run step 3, see the flag there and stop together: one checkpoint (step 3), no hang, exit code
    0."""
    root, _ = setup
    driver = tmp_path / "driver.py"
    driver.write_text(SIGNAL_RANK.format(rank=1, root=str(ROOT), flag=str(tmp_path / "signalled")))
    out, port = tmp_path / "ddp-sig", free_port()
    argv = [sys.executable, str(driver), *args(root, out, max_steps=50, eval_every=2, save_every=100000)]
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        log = open(tmp_path / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    deadline = time.time() + 150
    while time.time() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.5)
    hung = [p.pid for p in procs if p.poll() is None]
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    logs = [(tmp_path / f"rank{r}.log").read_text() for r in range(2)]
    assert not hung, f"ranks hung after a signal reached one of them:\n{logs[0][-1500:]}\n{logs[1][-1500:]}"
    assert [p.returncode for p in procs] == [0, 0], logs[0][-1500:] + logs[1][-1500:]
    assert (tmp_path / "signalled").exists() and "stopped by signal" in logs[0]
    ckpts = sorted(out.glob("ckpt-*.pt"))
    assert [c.name for c in ckpts] == ["ckpt-0000003.pt"], ckpts
    assert final_student(out)["step"] == 3


@pytest.mark.slow
def test_torchrun_eight_ranks_equals_one_process_and_resumes_after_sigterm(setup, tmp_path):
    """The README's `torchrun --nproc_per_node=8 train.py` with gloo: 8 ranks x micro-batch 2 x 1 micro-step
    give the parameters of 1 process x micro-batch 2 x 8 micro-steps on the same global batches of 16 after 4
    steps. Then a SIGTERM to rank 5 alone during the evaluation after step 2: every rank stops after step 3
    with a checkpoint, exit code 0; the same command with --resume=true runs step 4 and reaches the
    uninterrupted parameters."""
    root, _ = setup
    # float32: the comparison is then of the accumulation arithmetic, not of bf16 autocast's rounding
    common = dict(max_steps=4, micro_batch=2, batch_size=16, eval_every=2, eval_batches=2, save_every=100,
                  dtype="float32")
    T.train(T.parse_args(args(root, tmp_path / "one", **common)))
    one = final_student(tmp_path / "one")
    eight = finished(torchrun("--nproc_per_node=8", f"--master_port={free_port()}",
                              argv=args(root, tmp_path / "eight", **common)))
    assert "8 rank(s) x 2 sequences x 1 micro-steps" in eight, eight[-2000:]
    got = final_student(tmp_path / "eight")
    worst = max_param_diff(one, got)
    moved = max((one["model"][k] - v).abs().max().item() for k, v in
                student_from_teacher(load_pretrained(root / "teacher")).state_dict().items())
    print(f"8 ranks vs 1 process after 4 steps: max |parameter difference| {worst:.3g} (moved {moved:.3g})")
    assert got["step"] == 4 and len(got["rng"]) == 8 and worst < 1e-5 and moved > 1e-4, (worst, moved)

    driver = tmp_path / "driver.py"
    driver.write_text(SIGNAL_RANK.format(root=str(ROOT), rank=5, flag=str(tmp_path / "signalled")))
    out = tmp_path / "eight-sig"
    stopped = finished(torchrun("--nproc_per_node=8", f"--master_port={free_port()}", script=str(driver),
                                argv=args(root, out, **common)))
    assert (tmp_path / "signalled").exists() and "stopped by signal" in stopped, stopped[-2000:]
    assert [c.name for c in sorted(out.glob("ckpt-*.pt"))] == ["ckpt-0000003.pt"]
    finished(torchrun("--nproc_per_node=8", f"--master_port={free_port()}",
                      argv=args(root, out, **common, resume=True)))
    resumed = final_student(out)
    worst_resumed = max_param_diff(one, resumed)
    print(f"8 ranks, SIGTERM to rank 5 at step 3, resumed to step 4, vs 1 process: {worst_resumed:.3g}")
    assert resumed["step"] == 4 and worst_resumed < 1e-5, worst_resumed
    assert max_param_diff(got, resumed) < 1e-6  # and the uninterrupted 8-rank run (float32 rounding apart)


@pytest.mark.slow
def test_two_nodes_of_two_ranks_with_c10d_equal_one_process(setup, tmp_path):
    """The README's multi-node command: two torchrun launchers (as on two machines) meet through the c10d
    rendezvous on localhost, 2 nodes x 2 ranks x micro-batch 2 x 2 micro-steps; their parameters after 3
    steps equal 1 process x micro-batch 2 x 8 micro-steps."""
    root, _ = setup
    common = dict(max_steps=3, micro_batch=2, batch_size=16, dtype="float32")
    T.train(T.parse_args(args(root, tmp_path / "one", **common)))
    port = free_port()
    nodes = [torchrun("--nnodes=2", "--nproc_per_node=2", "--rdzv_backend=c10d",
                      f"--rdzv_endpoint=localhost:{port}", "--rdzv_id=two-nodes", f"--node_rank={n}",
                      argv=args(root, tmp_path / "two-nodes", **common)) for n in range(2)]
    logs = [finished(p) for p in nodes]
    assert any("4 rank(s) x 2 sequences x 2 micro-steps" in log for log in logs), logs[0][-2000:]
    got = final_student(tmp_path / "two-nodes")
    worst = max_param_diff(final_student(tmp_path / "one"), got)
    print(f"2 nodes x 2 ranks vs 1 process after 3 steps: max |parameter difference| {worst:.3g}")
    assert got["step"] == 3 and len(got["rng"]) == 4 and worst < 1e-5, worst


@pytest.mark.slow
def test_ranks_resume_rank0s_checkpoint_without_a_shared_folder(setup, tmp_path):
    """Issue 40: each rank resumed the newest checkpoint of its own out_dir. Without a shared file system the
    other ranks found none and started at step 0 while rank 0 continued: their replicas drifted apart and the
    run hung at its end (on the code before the fix, this test's resume hangs). Now rank 0 chooses and sends
    the checkpoint: two gloo ranks whose out_dir are different folders (rank 1's holds nothing), interrupted
    after step 2 and resumed, reach the parameters of the uninterrupted run; a refusal by rank 0 stops both."""
    root, _ = setup
    common = args(root, "out", max_steps=4, save_every=2, micro_batch=2, batch_size=4, keep_last=5,
                  teacher=root / "teacher-dropout")  # dropout: the ranks' RNG states must be restored too
    codes, logs = ranks_in_their_folders(tmp_path, common)
    assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    out0 = tmp_path / "node0" / "out"
    assert not list((tmp_path / "node1").glob("out/ckpt-*")), "only rank 0 writes checkpoints"
    full = final_student(out0)
    (out0 / "ckpt-0000004.pt").unlink()  # as if stopped after step 2
    (out0 / "ckpt-0000004.pt.sha256").unlink()
    codes, logs = ranks_in_their_folders(tmp_path, common + ["--resume=true"], name="resumed")
    assert codes == [0, 0], f"ranks hung or failed: {codes}\n{logs[0][-2000:]}\n{logs[1][-2000:]}"
    assert "resumed from out/ckpt-0000002.pt at step 2" in logs[0]
    resumed = final_student(out0)
    assert resumed["step"] == 4 and max_param_diff(full, resumed) == 0.0
    # a refusal decided by rank 0 (another seed) stops every rank with its message, none hangs
    codes, logs = ranks_in_their_folders(tmp_path, common + ["--resume=true", "--seed=7", "--max_steps=6"],
                                         name="refused")
    assert codes == [1, 1] and all("resuming it with --seed=7 is refused" in log for log in logs), logs
    # on another number of ranks: refused, unless --resume_changes=world (the data order rule: data.Batches)
    one = args(root, out0, max_steps=6, save_every=2, micro_batch=2, batch_size=4, keep_last=5,
               teacher=root / "teacher-dropout", resume=True)
    with pytest.raises(SystemExit, match=r"written by a run on 2 rank\(s\); resuming it on 1 is refused"):
        T.train(T.parse_args(one + ["--resume_changes=max_steps"]))  # extending the run is allowed; the world not
    assert T.train(T.parse_args(one + ["--resume_changes=max_steps,world"]))["step"] == 6
    assert len(final_student(out0)["rng"]) == 1


def test_another_world_size_continues_at_the_same_global_batch(setup):
    """data.Batches.load_state_dict: a position of w ranks read on w' ranks continues the epoch at the same
    global batch, rounded down to a multiple of w' (never skipping one): the global batches each rank takes
    next are those after the ones the old ranks used, bar at most w' - 1 seen again."""
    _, data = setup
    for was, now, position in [(2, 1, 3), (2, 4, 3), (4, 2, 1), (3, 2, 2)]:
        old = rank_batches(data, was, 0)
        used = position * was  # global batches 0 .. used - 1
        state = {**old.state_dict(), "position": position}
        ranks = [rank_batches(data, now, r) for r in range(now)]
        for b in ranks:
            b.load_state_dict(state)
        nxt = [next(iter(b))["index"] for b in ranks]
        assert sorted(nxt) == list(range(min(nxt), min(nxt) + now)), nxt
        assert used - now < min(nxt) <= used, (was, now, nxt)
