"""
Running the sections: waiting for a quiet machine, the CPU other processes used meanwhile, this run's machine
and settings, and the results table (out/bench-results.md, docs/benchmarks.md's region).
"""
import contextlib
import json
import os
import platform
import sys
import time

import torch

from benchmarks.common import COLUMNS, hf

def markdown(res):
    lines = ["| section | " + " | ".join(COLUMNS) + " | load before; others' cores |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for name, sec in res["sections"].items():
        lines += [f"| {name} | " + " | ".join(str(r[c]) for c in COLUMNS) +
                  f" | {sec['load_before']:.2f}; {sec['other_cores']:.2f} |" for r in sec.get("rows", [])]
    m = res["machine"]
    runs = {(sec.get("started"), sec.get("command")) for sec in res["sections"].values()}
    if len(runs) > 1:  # sections merged from several runs: say which run each comes from
        lines += [""] + [f"- {name}: run started {sec.get('started')}, `{sec.get('command')}`"
                         for name, sec in res["sections"].items()]
    return (f"{m['cpu']}, {m['cores']} cores ({res['threads']} torch threads), torch {m['torch']}, "
            f"transformers "
            f"{m['transformers']}, Python {m['python']}; {m['date']}; `{m['command']}`\n\n" + "\n".join(lines) + "\n")


def cpu_seconds():
    """(CPU seconds used by the whole machine, by this process and its finished children) since boot /
    start."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    t = os.times()
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user + t.children_system


def wait_for_quiet(max_load, timeout):
    """Wait (up to timeout s) until the 1-min load average is below max_load and, over 15 s, other processes
    kept less than a quarter of a core busy (a 2-thread run next to one busy core is mostly threads
    waiting)."""
    t0 = time.time()
    while max_load and time.time() - t0 < timeout:
        (all0, own0), s0 = cpu_seconds(), time.time()
        time.sleep(15)
        all1, own1 = cpu_seconds()
        if os.getloadavg()[0] < max_load and (all1 - all0 - (own1 - own0)) / (time.time() - s0) < 0.25:
            break
    return os.getloadavg()[0]



def results_so_far(a, size, out) -> dict:
    """This run's machine and settings; sections run separately accumulate, as long as the shapes are the
    same."""
    transformers = hf()
    res = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "python": platform.python_version(), "torch": torch.__version__,
                       "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
                       "command": " ".join(["python -m benchmarks"] + sys.argv[1:])},
           "threads": a.threads, "size": size, "quick": a.quick, "sections": {}}
    with contextlib.suppress(OSError, StopIteration):
        res["machine"]["cpu"] = next(x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo")
                                     if x.startswith("model name"))
    if out.is_file():
        old = json.loads(out.read_text())
        if (old.get("size"), old.get("quick")) == (size, a.quick):
            res["sections"] = old.get("sections", {})
    return res



def measure(name, run, a, res) -> dict:
    """One section, after waiting for a quiet machine; run again (--retries) when other processes were
    busy."""
    for attempt in range(1 + a.retries):
        before = wait_for_quiet(a.max_load, a.wait)
        print(f"{name}: {res['machine']['cpu']}, {a.threads} threads, 1-min load average {before:.2f}",
              flush=True)
        (all0, own0), t0 = cpu_seconds(), time.time()
        sec = run()
        (all1, own1), wall = cpu_seconds(), time.time() - t0
        others = max(0.0, (all1 - all0) - (own1 - own0)) / wall  # cores other processes kept busy meanwhile
        sec.update(load_before=before, other_cores=others, seconds=wall, date=time.strftime("%Y-%m-%d %H:%M"),
                   started=res["machine"]["date"], command=res["machine"]["command"], attempt=attempt)
        print(f"  {wall:.0f} s; 1-min load average {before:.2f} before; other processes used {others:.2f} "
              "cores meanwhile" + ("  (busy machine: these timings are noise)" if others > 0.3 else "")
              + (f"; skipped: {sec['skipped']}" if "skipped" in sec else ""), flush=True)
        if others <= 0.3:
            break
    return sec
