"""The notebooks are part of the lesson, so they are tested like code: each runs top to bottom on CPU (slow:
with NOTEBOOK_QUICK=1, the same code on tiny budgets), each is committed with its outputs stored, those outputs
come from the code as it is (the hash run.py stamps), and every number the text quotes is one they print."""
import json
import math
import re
import sys
from pathlib import Path

import nbformat
import pytest
import torch

FOLDER = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(FOLDER.glob("[0-9][0-9]_*.ipynb"))
sys.path.insert(0, str(FOLDER))
import run  # noqa: E402  (notebooks/run.py)
import quickstart_view  # noqa: E402
import sst2_runs  # noqa: E402


@pytest.fixture(scope="module")
def shared_work(tmp_path_factory):
    """One scratch folder for the module, as run.py gives one run: the corpus, the teacher's head and the SST-2
    teacher are made once. Notebook 04 reads the committed record, not a quickstart the machine may hold."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NOTEBOOK_WORK", str(tmp_path_factory.mktemp("notebooks")))
    mp.setenv("NOTEBOOK_QUICK", "1")
    mp.setenv("NOTEBOOK_QUICKSTART", str(tmp_path_factory.mktemp("no-quickstart")))
    yield
    mp.undo()


def texts(nb) -> list:
    """The text of every code cell's outputs, in order."""
    out = []
    for c in nb.cells:
        if c.cell_type == "code":
            out.append("".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                               for o in c.outputs if "image/png" not in o.get("data", {})))
    return out


# Notebooks whose quick mode takes seconds run in the default suite; 01-03 (a corpus prepared, a head fitted)
# only with --slow.
DEFAULT = ("04_", "05_", "06_")


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name, marks=() if p.name.startswith(DEFAULT)
                                               else pytest.mark.slow) for p in NOTEBOOKS])
def test_notebook_runs(path, shared_work):
    """Quick mode: the same code on tiny budgets, no error. Notebook 04 reads the committed record, so its run
    must print exactly what is stored."""
    nb, _, _ = run.execute(path)  # raises CellExecutionError on the first cell that fails
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    if path.name.startswith("04_"):
        assert texts(nb) == texts(nbformat.read(path, as_version=4))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_outputs_stored(path):
    """Every code cell has an output (or the tag "silent"), at least one figure is stored as a PNG, no cell is
    long, and the first cell says where and how long the run took (notebooks/run.py writes that line)."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    silent = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and not c.outputs
              and "silent" not in c.metadata.get("tags", [])]   # a cell of imports may be tagged silent
    assert not silent, f"code cells without outputs: {silent} (run python notebooks/run.py)"
    assert all(o.output_type != "error" for c in code for o in c.outputs)
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), "no figure stored"
    long = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and len(c.source.splitlines()) > 22]
    assert not long, f"code cells over 22 lines: {long}: move set-up into a notebooks/ module"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and run.RUN_LINE + " `python notebooks/run.py` ran" in first.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_stored_outputs_come_from_this_code(path):
    """run.py stamps the hash of the code it ran (its code cells and the notebooks/ modules they import): a cell
    or a helper changed since then fails here until `python notebooks/run.py NAME` is run again."""
    nb = nbformat.read(path, as_version=4)
    stamped = re.search(r"; code (\w+)\.\*", nb.cells[0].source)
    assert stamped, "no code hash in the run line: run python notebooks/run.py"
    assert stamped.group(1) == run.code_hash(nb, FOLDER), \
        f"{path.name}: its code changed since its outputs were stored: python notebooks/run.py {path.stem}"


# Numbers the text may quote without the outputs printing them: settings, the papers' figures, and arithmetic
# on printed numbers that the text shows step by step. Each with where it comes from.
QUOTED = {
    "01_bert_and_student.ipynb": {"0.67": "exercise 1's expected result, measured when it was written",
                                  "0.47": "the same", "0.74": "exercise 2's", "52.2": "exercise 4's"},
    "02_masking_and_losses.ipynb": {
        "25%": "the masking rate the first cell sets", "0.9": "arithmetic shown in the text",
        "0.15": "the same (BERT's masking rate)", "0.40": "1 - L_cos, the printed 0.60214",
        "0.50": "notebook 01's stored output", "31.9%": "notebook 04's teacher (its record)",
        "0.45": "notebook 04's teacher on the same sentence (its record)",
        "0.30": "exercise 1's expected results, measured when it was written", "0.0125": "the same",
        "1.19": "the same", "0.84": "the same", "0.80": "the same", "1.11": "exercise 2's"},
    "03_one_distillation_step.ipynb": {
        "42.0": "arithmetic shown in the text", "17.4": "the student's parameters in millions (notebook 01)",
        "0.98": "AdamW's beta2, train.py's (the reference code's)", "0.81": "the same", "1%": "100% - the printed 99.0%",
        "14.36": "the exercises' expected results, measured when they were written", "6.31": "the same",
        "6.15": "the same", "0.976": "the same", "16.78": "the same", "6.34": "the same", "6.50": "the same"},
    "04_distillation_you_can_see.ipynb": {
        "6.7%": "notebook 02's head-only teacher, its stored output",
        "0.62": "docs/quickstart.md: the quickstart with --seed=2", "0.16": "the same", "3.8": "the same",
        "8.4%": "an earlier stored run of this notebook (teacher of 40 steps)", "2.52": "the same",
        "12.8": "the same", "0.59": "exercise 2's expected result (python quickstart.py --alpha_cos=0)",
        "1.46": "the paper's Table 4", "0.87": "exercise 3's (python quickstart.py --temperature=1)",
        "5.6": "the same"},
    "05_finetune_and_compare.ipynb": {
        "17.4": "notebook 01's stored output (the student's parameters)", "22.9": "the same (MiniLM's)",
        "3.6": "0.5940 - 0.5585, the 14-step runs' printed seeds",
        "0.7890": "exercise 1's, measured (seed 1) when it was written (and exercise 3's earlier soft-target run)",
        "0.7683": "exercise 1's, the same way", "0.7546": "the same",
        "1.4": "the same (0.7683 - 0.7546)",
        "0.00": "exercise 1's: an earlier stored run of this notebook (1,000 labelled sentences for both, 3 seeds)",
        "1.16": "the same",
        "0.7878": "exercise 2's, measured (3 seeds) when it was written", "0.7630": "the same", "2.48": "the same",
        "1.23": "the same", "2.0": "the same",
        "0.7901": "exercise 3's, measured in an earlier version (1,000 labelled sentences for both)"},
    "06_pea_kd.ipynb": {},
}
# decimals and percentages; not section numbers (Section 3.2, 3.2.1), nor parts of names, powers or paths
NUMBER = re.compile(r"(?<![\w.^/-])(?<!Section )(?<!Sections )(?<!Table )(?<!Eq\. )"
                    r"(\d[\d,]*(?:\.\d+)?%|\d[\d,]*\.\d+)(?![.\d]|e[-+]?\d)")


def printed(text) -> list:
    return [float(x.replace(",", "")) for x in re.findall(r"[-+]?\d[\d,]*\.?\d*(?:e[-+]?\d+)?", text)
            if re.search(r"\d", x)]


def matches(quoted, values) -> bool:
    """A quoted number (as written: '0.50', '31.9%', '2,240.5') is one of the printed values rounded to its
    digits; a percentage may also be a printed fraction times 100, or a printed percentage."""
    pct = quoted.endswith("%")
    q = quoted.rstrip("%").replace(",", "")
    digits = len(q.split(".")[1]) if "." in q else 0
    target = float(q)
    close = lambda x: math.isclose(round(x, digits), target, abs_tol=10 ** -(digits + 3))
    return any(close(x) or close(-x) or (pct and close(100 * x)) for x in values)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_numbers_in_the_text_are_in_the_outputs(path):
    """Every decimal number and percentage the markdown quotes (after the title cell) is printed by a stored
    output, to the digits the text gives, or is listed in QUOTED: so that the text cannot say 2.6 points where the
    run printed 2.5."""
    nb = nbformat.read(path, as_version=4)
    values = printed("\n".join(texts(nb)))
    allowed = QUOTED[path.name]
    wrong = []
    for c in nb.cells[1:]:
        if c.cell_type == "markdown":
            text = re.sub(r"`[^`]*`", "", c.source)          # code spans quote code, not results
            wrong += [q for q in NUMBER.findall(text) if q not in allowed and not matches(q, values)]
    assert not wrong, f"{path.name}: the text quotes numbers no output prints: {wrong}"


def test_the_number_check_by_hand():
    assert matches("0.50", [0.4993]) and matches("31.9%", [0.3188]) and matches("2.5", [-2.52])
    assert not matches("2.6", [-2.52]) and not matches("0.51", [0.4993]) and matches("12.6%", [12.6])
    assert NUMBER.findall("lost by 2.6 points (12.8%), 1,018 times, layer 3") == ["2.6", "12.8%"]
    assert NUMBER.findall("Section 3.2.1, Section 3.3, Table 4, e^6.84, 3.2.1, 4.35e-06 and 0.5") == ["0.5"]


def test_stamp_replaces_the_run_line():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Title\n\ntext")])
    run.stamp(nb, run.RUN_LINE + " first*")
    run.stamp(nb, run.RUN_LINE + " second*")
    assert nb.cells[0].source == "# Title\n\ntext\n\n" + run.RUN_LINE + " second*"


def test_code_hash_follows_the_code_and_its_helpers(tmp_path):
    (tmp_path / "helper.py").write_text("X = 1\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# x"),
                                         nbformat.v4.new_code_cell("import helper\nprint(helper.X)")])
    before = run.code_hash(nb, tmp_path)
    nb.cells[0].source = "# another title"
    assert run.code_hash(nb, tmp_path) == before           # markdown does not count
    (tmp_path / "helper.py").write_text("X = 2\n")
    assert run.code_hash(nb, tmp_path) != before           # a helper the code imports does
    (tmp_path / "helper.py").write_text("X = 1\n")
    nb.cells[1].source += "\nprint(2)"
    assert run.code_hash(nb, tmp_path) != before


def test_a_failing_notebook_is_left_as_it_was(tmp_path, monkeypatch, capsys):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# x"),
                                         nbformat.v4.new_code_cell("raise ValueError('boom')")])
    path = tmp_path / "99_fails.ipynb"
    nbformat.write(nb, path)
    before = path.read_bytes()
    monkeypatch.setattr(run, "HERE", tmp_path)
    assert run.main(["99_fails"]) == 1
    assert path.read_bytes() == before
    assert "boom" in capsys.readouterr().err


def test_the_record_holds_what_its_results_say():
    """notebooks/quickstart_record.json: the per-token hits give the accuracies results.json reports, and the
    paired difference it reports; the bits round-trip."""
    v = json.loads(quickstart_view.RECORD.read_text())
    hits, sequence = quickstart_view.unpack(v)
    for name, m in v["results"]["models"].items():
        assert hits[name].double().mean().item() == pytest.approx(m["mlm_acc"], abs=1e-12)
    from eval import paired_difference
    p = paired_difference(hits["student"], hits["student-mlm-only"], groups=sequence)
    assert p["delta"] == pytest.approx(v["results"]["student_vs_mlm_only"]["delta"], abs=1e-12)
    assert p["se"] == pytest.approx(v["results"]["student_vs_mlm_only"]["se"], rel=1e-9)
    x = torch.tensor([1, 0, 0, 1, 1, 1, 0], dtype=torch.bool)
    assert quickstart_view.bits(x) == "9c" and torch.equal(quickstart_view.unbits("9c", 7), x)


def test_transfer_loss_by_hand():
    """alpha * T^2 KL(teacher || student at T) over every row + (1 - alpha) * CE over the labelled rows."""
    torch.manual_seed(0)
    logits, teacher = torch.randn(4, 2), torch.randn(4, 2)
    labels = torch.tensor([1, -100, 0, -100])

    class Fixed(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, token_type_ids=None):
            return type("Out", (), {"logits": logits})

    batch = {"input_ids": torch.zeros(4, 3, dtype=torch.long), "attention_mask": torch.ones(4, 3),
             "token_type_ids": torch.zeros(4, 3, dtype=torch.long), "labels": labels, "teacher_logits": teacher}
    T, a = 2.0, 0.3
    p, log_q = teacher.div(T).softmax(-1), logits.div(T).log_softmax(-1)
    kl = (p * (p.log() - log_q)).sum(-1).mean() * T * T
    ce = -(logits.log_softmax(-1)[[0, 2], [1, 0]]).mean()
    got = sst2_runs.transfer_loss(alpha=a, temperature=T)(Fixed(), batch)
    assert got.item() == pytest.approx((a * kl + (1 - a) * ce).item(), rel=1e-6)
    batch["labels"] = torch.full((4,), -100)                 # a batch of the transfer set alone: no NaN
    assert sst2_runs.transfer_loss(alpha=a, temperature=T)(Fixed(), batch).item() == pytest.approx(
        (a * kl).item(), rel=1e-6)


def test_the_stand_in_task_follows_its_rule():
    """The synthetic stand-in (no ../shared): positive when more clauses are positive, 'not' flipping one."""
    for e in sst2_runs.stand_in(200, 0):
        score = 0
        for clause in e.text_a.split(" and "):
            word = clause.split()[-1]
            sign = 1 if word in ("good", "great", "fun", "moving") else -1
            score += -sign if " not " in f" {clause} " else sign
        assert e.label == int(score > 0)


def test_notebook_05s_sets(monkeypatch, tmp_path):
    """sst2_transfer.data: the student's labelled rows are the teacher's first rows, the transfer set comes after
    the teacher's (no row of it was trained on with a label), and a teacher with fewer rows than the student is
    refused in one line."""
    import sst2_transfer
    monkeypatch.setattr(sst2_runs, "GLUE", tmp_path)          # no SST-2 there: the synthetic stand-in
    d = sst2_transfer.data(sst2_transfer.Split(labelled=5, teacher_labelled=12, transfer=7))
    assert "stand-in" in d["source"]
    assert [len(d[k]["labels"]) for k in ("train", "teacher_train", "transfer")] == [5, 12, 7]
    texts_of = lambda t: [tuple(r[m == 1].tolist()) for r, m in zip(t["input_ids"], t["attention_mask"])]
    assert texts_of(d["train"]) == texts_of(d["teacher_train"])[:5]
    everything = sst2_runs.stand_in(19, 0)                  # the rows in order: the teacher's 12, then 7 more
    assert d["teacher_train"]["labels"].tolist() == [e.label for e in everything[:12]]
    assert d["transfer"]["labels"].tolist() == [e.label for e in everything[12:]]
    with pytest.raises(ValueError, match="teacher_labelled=3"):
        sst2_transfer.data(sst2_transfer.Split(labelled=5, teacher_labelled=3, transfer=7))
