"""
Running graded tests: the tests of tests/test_parts.py run in this process, and each call they make into the
student's code goes to a worker (course/sandbox.py) that holds only the modules and the probes; the tests, their
expected values and their data never leave this process.
"""
import concurrent.futures
import importlib.util
import shutil
import tempfile
import threading
from pathlib import Path

from course import sandbox, wire
from course.markers import functions, without_hidden_tests
from course.parts import TESTS
from course.tree import SUITE, worker_files

PER_CALL = 10.0  # seconds a test's call into the student's code may take (the reference's take milliseconds)


class Suite:
    """The tests of a tree (tests/test_parts.py and its data), loaded in this process: a fresh module for each
    run, whose `student` is that run's worker."""

    def __init__(self, files):
        self.folder = Path(tempfile.mkdtemp(prefix="assignment-tests-"))
        for name in SUITE:
            if name in files:
                (self.folder / name).parent.mkdir(parents=True, exist_ok=True)
                (self.folder / name).write_bytes(files[name])
        text = files[TESTS].decode()
        self.hidden = set(functions(text, TESTS)) - set(functions(without_hidden_tests(text, TESTS), TESTS))
        self.count, self.lock = 0, threading.Lock()

    def module(self):
        with self.lock:
            self.count += 1
            name = f"graded_tests_{self.count}"
        spec = importlib.util.spec_from_file_location(name, self.folder / TESTS)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def close(self):
        shutil.rmtree(self.folder, ignore_errors=True)


def run_tests(files, names, suite=None, contained=None, limits=None) -> dict:
    """{test: None (passed) or why it failed, in one line} for tests of tests/test_parts.py: the tests run
    here, each call into the student's code goes to one worker that holds worker_files(files) (visible tests
    first, then hidden ones; a worker that ends or hangs is replaced for the next test). suite: the tests, if
    not those of files."""
    own, contained = suite is None, sandbox.LINUX if contained is None else contained
    suite = suite or Suite(files)
    results, order = {}, sorted(names, key=lambda n: n in suite.hidden)
    try:
        module = suite.module()
    except BaseException as e:
        return {n: f"importing the tests failed: {wire.one_line(e)}" for n in names}
    try:
        worker = sandbox.Worker(worker_files(files), limits=limits, contained=contained, timeout=PER_CALL)
    except OSError as e:
        if own:
            suite.close()
        return {n: f"no test process: {e}" for n in names}
    try:
        module.student = worker.student
        for n in order:
            test = getattr(module, n, None)
            if worker.broken:
                results[n] = worker.broken
            elif test is None:
                results[n] = f"not in {TESTS}"
            else:
                results[n] = run_one(test, worker)
    finally:
        worker.close()
        if own:
            suite.close()
    return {n: results[n] for n in names}


def run_one(test, worker):
    try:
        test()
        return None
    except wire.Ended as e:
        code = worker.stop()
        how = f"killed by signal {code - 128}" if isinstance(code, int) and code > 128 else \
            "killed at the time limit" if code == 124 else f"exit code {code}"
        worker.start()
        return f"the test process ended during this test ({e}; {how})"
    except wire.Raised as e:
        return str(e)
    except Exception as e:  # an assertion, or what came back could not be used as the test expects
        return wire.one_line(e)


def in_parallel(jobs, workers=2):
    """[f() for f in jobs], `workers` at a time (the machines have two cores)."""
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(lambda f: f(), jobs))

