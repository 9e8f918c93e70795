#!/usr/bin/env python
"""Mutation testing for geovario: plant one realistic bug at a time and see whether a fast test fails.

    python scripts/mutate.py                         # every module of MODULES, resuming where a run stopped
    python scripts/mutate.py losses geo --jobs 2     # some groups; two mutants at a time
    python scripts/mutate.py --list losses           # the mutants, without running them
    python scripts/mutate.py --report                # write benchmarks/results/mutation.md from the results

How it works:
1. Coverage map. The fast suite (``-m "not slow"``) runs once under coverage with a context per test
   (pytest-cov's ``--cov-context=test``), in a scratch copy of the repository. That gives, for every line
   of the mutated modules, the tests that run it, and each test's duration.
2. Mutants. Each module's syntax tree yields one-token bugs of the kinds that slip into numeric code: a
   comparison's boundary (< for <=), an arithmetic operator, a constant (n -> n + 1, x -> 2x), a sign, and
   or or, min for max, True for False, an inverted condition, a dropped ``.detach()``, a deleted call or
   in-place update. Strings, docstrings, annotations, error messages and progress output are left alone.
3. Runs. A mutant is written into a scratch copy and the tests that cover its line run (fastest first,
   stopping at the first failure) in a process forked from one that has already imported torch and the
   other heavy libraries, so a mutant costs the tests, not the imports. A failure or an error kills it; a
   run past its time limit (an infinite loop) counts as killed by timeout. A mutant that no fast test
   reaches survives as "uncovered".
4. Results go to .mutation/results.json, keyed by the mutant and the commit of src/ and tests/; a rerun at
   the same tree resumes. ``--report`` writes the kill rate per module, and every survivor with the reason
   it is judged equivalent (scripts/mutation_equivalents.yaml), to benchmarks/results/mutation.md.

Needs the ``mutation`` extra (coverage, pytest-cov): pip install -e '.[test,mutation]'.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "geovario"
STATE = REPO / ".mutation"
EQUIVALENTS = REPO / "scripts" / "mutation_equivalents.yaml"
REPORT = REPO / "benchmarks" / "results" / "mutation.md"

# The modules whose numbers users publish (issue 24), by group, and the test files whose fast tests guard them.
# variogram/plot.py draws a figure and variogram/choices.py only lists names; neither computes a number. A
# mutant runs the tests of its group's files that cover its line: the module's own tests and the ones that
# use it directly, not every integration test that happens to pass through it (a whole study, the demo).
MODULES = {
    "losses": ["losses/*.py"],
    "negatives": ["negatives/*.py"],
    "variogram": ["variogram/empirical.py", "variogram/fit.py", "variogram/models.py", "variogram/estimate.py"],
    "metrics": ["metrics.py"],
    "evaluate": ["evaluate.py"],
    "geo": ["geo.py", "geo_tensors.py"],
    "retrieval": ["retrieval.py"],
    "train": ["train/*.py"],
    "sim": ["lab/world.py"],
    "study": ["lab/study.py"],
    "confidence": ["confidence.py", "calibration.py"],
    "predict": ["predict.py", "predict_folder.py", "api.py"],
    "store": ["data/store.py", "data/latlon_csv.py"],
    "places": ["places.py", "geonames.py"],
}
# Tests that run geovario in subprocesses (torchrun's ranks): no coverage reaches them, so they run for a group's
# survivors only, as a second stage. They catch what only a job of several processes exercises (local_loss, DDP), or a kill.
SUBPROCESS_TESTS = {"negatives": ["tests/test_distributed.py"], "train": ["tests/test_distributed.py"],
                    # a folder prediction killed with SIGKILL in a process of its own
                    "predict": ["tests/test_predict_folder.py::test_a_kill_loses_at_most_the_chunk_being_encoded"]}
TEST_FILES = {
    "losses": ["test_losses.py", "test_losses_variants.py", "test_ssl.py", "test_negatives.py", "test_train.py", "test_train_options.py"],
    "negatives": ["test_negatives.py", "test_losses.py", "test_train.py", "test_train_options.py"],
    "variogram": ["test_variogram.py", "test_losses.py", "test_train.py", "test_sim.py", "test_bad_input.py"],
    "metrics": ["test_metrics.py", "test_score_compare.py", "test_evaluate.py", "test_bad_input.py"],
    "evaluate": ["test_evaluate.py", "test_train_options.py", "test_score_compare.py", "test_bad_input.py"],
    "geo": ["test_geo.py", "test_negatives.py", "test_variogram.py", "test_metrics.py", "test_data_readers.py",
            "test_score_compare.py", "test_model.py", "test_interop_geoclip.py", "test_bad_input.py"],
    "retrieval": ["test_retrieval.py", "test_cli_predict.py", "test_evaluate.py", "test_serve.py", "test_bad_input.py"],
    "train": ["test_train.py", "test_train_options.py", "test_checkpoints.py", "test_store_data.py", "test_negatives.py", "test_progress.py",
              "test_bad_input.py", "test_ssl.py"],
    "sim": ["test_sim.py"],
    "study": ["test_study.py"],
    "confidence": ["test_confidence.py", "test_calibration.py", "test_api.py", "test_cli_predict.py", "test_evaluate.py", "test_predictor.py"],
    "store": ["test_store_reads.py", "test_latlon_csv.py", "test_store_data.py", "test_store_extract.py", "test_data_readers.py", "test_modeldir.py", "test_variogram.py",
              "test_evaluate.py", "test_bad_input.py"],
    "places": ["test_places.py", "test_metrics.py", "test_geo.py", "test_sim.py", "test_cli_predict.py"],
    "predict": ["test_api.py", "test_predictor.py", "test_predict_folder.py", "test_tta.py", "test_cli_predict.py", "test_confidence.py",
                "test_calibration.py", "test_text_queries.py", "test_evaluate.py", "test_serve.py", "test_bad_input.py"],
}

# Calls that only report (progress bars, warnings): deleting them or changing their arguments is not a bug in a number.
QUIET_CALLS = {"set_postfix", "set_description", "write_line", "print", "warn", "debug", "info", "refresh"}
BAR_METHODS = {"update", "close"}  # quiet when called on a progress bar (a name ending in "bar")
# Calls whose arguments are messages.
MESSAGE_CALLS = {"GeovarioError", "ValueError", "TypeError", "RuntimeError", "VariogramFitError", "KeyError", "warn", "print",
                 "progress", "tqdm", "progress_bar", "AssertionError", "NotImplementedError", "SystemExit"}
SWAP_NAMES = {"min": "max", "max": "min", "argmin": "argmax", "argmax": "argmin", "minimum": "maximum", "maximum": "minimum",
              "amin": "amax", "amax": "amin", "floor": "ceil", "ceil": "floor", "any": "all", "all": "any"}
COMPARE = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"), ast.Eq: ("==", "!="),
           ast.NotEq: ("!=", "=="), ast.Is: ("is", "is not"), ast.IsNot: ("is not", "is"), ast.In: ("in", "not in"),
           ast.NotIn: ("not in", "in")}
BINARY = {ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"), ast.Div: ("/", "*"), ast.FloorDiv: ("//", "/"),
          ast.Pow: ("**", "*"), ast.Mod: ("%", "//"), ast.BitAnd: ("&", "|"), ast.BitOr: ("|", "&")}
AUGMENTED = {ast.Add: ("+=", "-="), ast.Sub: ("-=", "+="), ast.Mult: ("*=", "/="), ast.Div: ("/=", "*="), ast.BitOr: ("|=", "&="),
             ast.BitAnd: ("&=", "|=")}


@dataclass
class Mutant:
    id: str  # stable across edits elsewhere: file, function, the line's text, the change, occurrence
    file: str  # relative to src/geovario
    line: int
    kind: str
    original: str
    replacement: str
    start: int  # character offsets of the replaced text in the file
    end: int
    function: str
    text: str  # the mutated line as it reads after the change
    run_line: int = 0  # the line whose tests are run: a default argument's function body, else the line itself


# --- mutant generation ---


class _Finder(ast.NodeVisitor):
    def __init__(self, source: str, relpath: str):
        self.source, self.relpath = source, relpath
        self.lines = source.splitlines(keepends=True)
        self.offsets = [0]
        for line in self.lines:
            self.offsets.append(self.offsets[-1] + len(line))
        self.scope: list[str] = []
        self.found: list[tuple[int, int, str, str, str, str, int]] = []  # start, end, kind, original, replacement, function, run line
        self.run_line = 0  # while visiting a default argument: the first line of its function's body
        self.quiet = {i + 1 for i, line in enumerate(self.lines) if "pragma: no mutate" in line or "pragma: no cover" in line}

    def offset(self, line: int, col: int) -> int:
        """Character offset of a (1-based line, UTF-8 byte column) position."""
        text = self.lines[line - 1].encode()[:col].decode()
        return self.offsets[line - 1] + len(text)

    def span(self, node) -> tuple[int, int]:
        return self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset)

    def add(self, start: int, end: int, kind: str, replacement: str, line: int) -> None:
        if line in self.quiet:
            return
        original = self.source[start:end]
        if original != replacement:
            self.found.append((start, end, kind, original, replacement, ".".join(self.scope) or "<module>", self.run_line or line))

    def token_between(self, left, right, token: str) -> int | None:
        """Offset of ``token`` in the source between two nodes (skipping brackets and spaces)."""
        a, b = self.span(left)[1], self.span(right)[0]
        gap = self.source[a:b]
        at = gap.find(token)
        return None if at < 0 else a + at

    # scopes
    def visit_FunctionDef(self, node):
        self.scope.append(node.name)
        body = node.body[1:] if _docstring(node) and len(node.body) > 1 else node.body
        self.run_line = body[0].lineno  # a default is evaluated at import, but it matters when the function runs
        for default in [*node.args.defaults, *[d for d in node.args.kw_defaults if d is not None]]:
            self.visit(default)
        self.run_line = 0
        for statement in node.body[1:] if _docstring(node) else node.body:
            self.visit(statement)
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self.scope.append(node.name)
        for statement in node.body[1:] if _docstring(node) else node.body:
            self.visit(statement)
        self.scope.pop()

    # left alone
    def visit_Import(self, node):
        pass

    visit_ImportFrom = visit_Import

    def visit_JoinedStr(self, node):
        pass

    def visit_Raise(self, node):
        pass

    def visit_Assert(self, node):
        pass

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit(node.value)

    def visit_Assign(self, node):
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return
        self.generic_visit(node)

    def visit_Call(self, node):
        name = _call_name(node)
        if name in MESSAGE_CALLS or _quiet(node):
            return
        if name in SWAP_NAMES and not _is_attribute_of_self(node.func):
            func_start, func_end = self.span(node.func)
            self.add(func_end - len(name), func_end, "swap-call", SWAP_NAMES[name], node.lineno)
        if isinstance(node.func, ast.Attribute) and node.func.attr == "detach" and not node.args:
            start, end = self.span(node)
            inner_end = self.span(node.func.value)[1]
            self.add(inner_end, end, "drop-detach", "", node.lineno)
        for keyword in node.keywords:
            if keyword.arg in ("min", "max") and name in ("clamp", "clamp_", "clip"):
                at = self.offset(keyword.lineno, keyword.col_offset)
                self.add(at, at + 3, "swap-keyword", "max" if keyword.arg == "min" else "min", keyword.lineno)
        self.generic_visit(node)

    def visit_Expr(self, node):
        if isinstance(node.value, ast.Constant):  # a docstring or a bare string
            return
        if isinstance(node.value, ast.Call):
            if _call_name(node.value) in MESSAGE_CALLS or _quiet(node.value):
                return
            if isinstance(node.value.func, ast.Attribute) and isinstance(node.value.func.value, ast.Call) \
                    and _call_name(node.value.func.value) == "super":
                return  # super().__init__(): its deletion breaks every use at once
            start, end = self.span(node)
            self.add(start, end, "delete-call", "pass", node.lineno)
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        start, end = self.span(node)
        op = AUGMENTED.get(type(node.op))
        if op:
            at = self.token_between(node.target, node.value, op[0])
            if at is not None:
                self.add(at, at + len(op[0]), "augmented-operator", op[1], node.lineno)
        self.add(start, end, "delete-update", "pass", node.lineno)
        self.generic_visit(node)

    def visit_Compare(self, node):
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands, operands[1:]):
            token, replacement = COMPARE[type(op)]
            a, b = self.span(left)[1], self.span(right)[0]
            gap = self.source[a:b]
            found = _find_operator(gap, token)
            if found is not None:
                self.add(a + found, a + found + len(token), "comparison", replacement, node.lineno)
        self.generic_visit(node)

    def visit_BinOp(self, node):
        op = BINARY.get(type(node.op))
        stringy = any(isinstance(side, (ast.JoinedStr, ast.List, ast.Tuple, ast.Dict)) or
                      (isinstance(side, ast.Constant) and isinstance(side.value, str)) for side in (node.left, node.right))
        if op and not stringy:
            a, b = self.span(node.left)[1], self.span(node.right)[0]
            found = _find_operator(self.source[a:b], op[0])
            if found is not None:
                self.add(a + found, a + found + len(op[0]), "arithmetic", op[1], node.lineno)
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        start, end = self.span(node)
        operand_start = self.span(node.operand)[0]
        if isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant):
            self.add(start, operand_start, "sign", "", node.lineno)
        elif isinstance(node.op, ast.USub):  # -1 -> 1, -0.5 -> 0.5
            self.add(start, operand_start, "sign", "", node.lineno)
            return
        elif isinstance(node.op, ast.Not):
            self.add(start, operand_start, "negation", "", node.lineno)
        self.generic_visit(node)

    def visit_BoolOp(self, node):
        token, replacement = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
        for left, right in zip(node.values, node.values[1:]):
            a, b = self.span(left)[1], self.span(right)[0]
            found = _find_word(self.source[a:b], token)
            if found is not None:
                self.add(a + found, a + found + len(token), "boolean", replacement, node.lineno)
        self.generic_visit(node)

    def _condition(self, test):
        if isinstance(test, (ast.Compare, ast.BoolOp)) or (isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)):
            return  # mutated by their own operators
        start, end = self.span(test)
        self.add(start, end, "condition", f"not ({self.source[start:end]})", test.lineno)

    def visit_If(self, node):
        self._condition(node.test)
        self.generic_visit(node)

    def visit_While(self, node):
        self._condition(node.test)
        self.generic_visit(node)

    def visit_IfExp(self, node):
        self._condition(node.test)
        self.generic_visit(node)

    def visit_Constant(self, node):
        value = node.value
        start, end = self.span(node)
        if isinstance(value, bool):
            self.add(start, end, "constant", str(not value), node.lineno)
        elif isinstance(value, int):
            self.add(start, end, "constant", str(value + 1), node.lineno)
        elif isinstance(value, float):
            self.add(start, end, "constant", repr(value * 2 if value else 1.0), node.lineno)


def _docstring(node) -> bool:
    return bool(node.body) and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant) \
        and isinstance(node.body[0].value.value, str)


def _call_name(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _quiet(node: ast.Call) -> bool:
    name, func = _call_name(node), node.func
    if name in QUIET_CALLS:
        return True
    receiver = func.value if isinstance(func, ast.Attribute) else None
    return name in BAR_METHODS and isinstance(receiver, ast.Name) and receiver.id.endswith("bar")


def _is_attribute_of_self(func) -> bool:
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self"


def _find_operator(gap: str, token: str) -> int | None:
    """Where ``token`` stands as the operator in the text between two operands (outside brackets and comments)."""
    depth, i = 0, 0
    while i < len(gap):
        ch = gap[i]
        if ch == "#":
            end = gap.find("\n", i)
            i = len(gap) if end < 0 else end
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth <= 0 and gap.startswith(token, i):
            after = gap[i + len(token) : i + len(token) + 1]
            before = gap[i - 1 : i] if i else ""
            symbolic = not token[0].isalpha()
            if symbolic and (after in "=*/<>" and after) and token not in ("**", "//") and not token.endswith("="):
                i += 1
                continue
            if symbolic and token in ("*", "/") and (after == token or before == token):
                i += 1
                continue
            if not symbolic and ((before and (before.isalnum() or before == "_")) or (after and (after.isalnum() or after == "_"))):
                i += 1
                continue
            return i
        i += 1
    return None


def _find_word(gap: str, word: str) -> int | None:
    return _find_operator(gap, word)


def mutants_of(relpath: str, source: str | None = None) -> list[Mutant]:
    source = (SRC / relpath).read_text() if source is None else source
    finder = _Finder(source, relpath)
    finder.visit(ast.parse(source))
    out, seen = [], {}
    for start, end, kind, original, replacement, function, run_line in sorted(finder.found):
        line = source.count("\n", 0, start) + 1
        line_start = source.rfind("\n", 0, start) + 1
        line_end = source.find("\n", end)
        line_end = len(source) if line_end < 0 else line_end
        before = source[line_start:line_end].strip()
        after = (source[line_start:start] + replacement + source[end:line_end]).strip()
        key = (relpath, function, before, kind, original, replacement)
        seen[key] = seen.get(key, 0) + 1
        ident = hashlib.sha1(json.dumps([*key, seen[key]]).encode()).hexdigest()[:12]
        mutated = source[:start] + replacement + source[end:]
        try:
            compile(mutated, relpath, "exec")
        except SyntaxError:
            continue
        out.append(Mutant(ident, relpath, line, kind, original, replacement, start, end, function, after, run_line))
    return out


def target_files(groups: list[str]) -> dict[str, list[str]]:
    files = {}
    for group in groups:
        found = []
        for pattern in MODULES[group]:
            found += sorted(str(p.relative_to(SRC)) for p in SRC.glob(pattern) if p.name != "__init__.py" or pattern.endswith("__init__.py"))
        files[group] = found
    return files


# --- the scratch copies and the forked runs ---


def tree_hash() -> str:
    """The content of src/, tests/ and configs/ as git sees it in the working tree (uncommitted edits included)."""
    digest = hashlib.sha256()
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "src", "tests", "configs", "examples", "pyproject.toml"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in sorted(listed):
        path = REPO / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def make_scratch(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.split("\n")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return folder


HEAVY = ["numpy", "pandas", "scipy.optimize", "scipy.special", "sklearn.neighbors", "torch", "torch.nn.functional", "safetensors.torch",
         "PIL.Image", "yaml", "tqdm.auto", "pytest", "matplotlib", "matplotlib.pyplot", "reverse_geocoder", "transformers", "fastapi",
         "coverage", "pytest_cov"]


def preload() -> None:
    """Import what every test run needs and geovario does not own, once, before forking."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in HEAVY:
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - an optional library; the tests that need it will say so
            pass


def run_pytest_in_child(scratch: Path, args: list[str], log: Path, plugins=(), threads: int = 0) -> int:
    """Fork; the child runs pytest in ``scratch`` with the mutated sources first on the path; returns the pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 3
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.setsid()  # its own process group, so a timeout kills its subprocesses too
        os.chdir(scratch)
        sys.path.insert(0, str(scratch / "src"))
        sys.dont_write_bytecode = True
        if threads:  # several mutants at once: one thread each, or OpenMP's spinning threads slow every run down
            import torch

            torch.set_num_threads(threads)
            os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["PYTHONPATH"] = str(scratch / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
        import pytest

        code = int(pytest.main(args, plugins=list(plugins)))
    except BaseException as e:  # noqa: BLE001 - anything the mutant breaks is a test failure to report
        print(f"mutation harness: {type(e).__name__}: {e}")
        code = 3
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def wait(pid: int, timeout: float) -> tuple[int | None, float]:
    start = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), time.monotonic() - start
        if time.monotonic() - start > timeout:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return None, time.monotonic() - start
        time.sleep(0.05)


class _Timing:
    """A pytest plugin: each test's setup and call + teardown durations, written as JSON at the end.

    Setup is kept apart: a module- or session-scoped fixture's cost lands on the first test that uses it, which
    may not be among the tests a mutant selects; the time limit adds, per test file, the largest setup in it."""

    def __init__(self, path: Path):
        self.path, self.durations, self.setups = path, {}, {}

    def pytest_runtest_logreport(self, report):
        if report.when == "setup":
            self.setups[report.nodeid] = report.duration
        else:
            self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self, session):
        self.path.write_text(json.dumps({"durations": self.durations, "setups": self.setups}))


class _ColdCaches:
    """A pytest plugin for the coverage run: empty geovario's ``functools`` caches before each test.

    A cached function's lines run only in the first test that calls it, so the coverage map would tie them to
    that test alone and a mutant there would face one test (or none: "uncovered"). Cleared, every test that calls
    it runs its lines and is mapped to them."""

    def pytest_runtest_setup(self, item):
        for name, module in list(sys.modules.items()):
            if name == "geovario" or name.startswith("geovario."):
                for value in list(vars(module).values()):
                    if callable(getattr(value, "cache_clear", None)) and getattr(value, "__module__", "") == name:
                        value.cache_clear()


PYTEST_ARGS = ["-q", "-p", "no:cacheprovider", "--no-header", "-o", "addopts="]
THREADS_PER_JOB = 0  # set by run(): torch threads per mutant when several run at once (0: torch's default)


def collect_coverage(scratch: Path, test_files: list[str]) -> dict:
    """Run the fast tests of ``test_files`` once under coverage; returns {"lines": {file: {line: [nodeid]}},
    "durations": {nodeid: s}, "setups": {nodeid: s}}."""
    data_file = STATE / "coverage.sqlite"
    data_file.unlink(missing_ok=True)
    timing = STATE / "durations.json"
    os.environ["COVERAGE_FILE"] = str(data_file)
    args = [*PYTEST_ARGS, "-m", "not slow", "--cov=geovario", "--cov-context=test", "--cov-report=",
            f"--basetemp={scratch / '.pytest-tmp'}", *test_files]
    print(f"coverage map: running the fast tests of {len(test_files)} files once under coverage (minutes)", flush=True)
    pid = run_pytest_in_child(scratch, args, STATE / "coverage.log", plugins=[_Timing(timing), _ColdCaches()])
    code, seconds = wait(pid, 3600)
    if code not in (0, 1):
        sys.exit(f"the coverage run failed (exit {code}); see {STATE / 'coverage.log'}")
    if code == 1:
        print(f"warning: some tests failed in the coverage run; see {STATE / 'coverage.log'}", flush=True)
    from coverage import CoverageData

    data = CoverageData(basename=str(data_file))
    data.read()
    lines: dict[str, dict[str, list[str]]] = {}
    root = str(scratch / "src" / "geovario") + os.sep
    for measured in data.measured_files():
        if not measured.startswith(root):
            continue
        per_line = data.contexts_by_lineno(measured)
        lines[measured[len(root):]] = {str(n): sorted({c.rsplit("|", 1)[0] for c in ctx if c}) for n, ctx in per_line.items()}
    print(f"coverage map: {seconds:.0f} s", flush=True)
    return {"lines": lines, **json.loads(timing.read_text())}


def tests_for(mutant: Mutant, coverage: dict, group: str) -> list[str]:
    """The fast tests of the group's test files that run the mutated line, fastest first; for a line run only at
    import, every one of them that runs any line of its file."""
    per_line = coverage["lines"].get(mutant.file, {})
    line = str(mutant.run_line or mutant.line)
    nodes = set(per_line.get(line, []))
    if line in per_line and not nodes:  # run only at import time (a module constant, a class attribute)
        nodes = {n for tests in per_line.values() for n in tests}
    files = {f"tests/{name}" for name in TEST_FILES[group]}
    durations = coverage["durations"]
    return sorted((n for n in nodes if n in durations and n.split("::", 1)[0] in files), key=lambda n: (durations[n], n))


def time_budget(tests: list[str], coverage: dict) -> float:
    """Seconds the whole test files these tests belong to took in the coverage run.

    A test's own duration is not enough: tests share module-scoped fixtures and caches, so which test pays for
    them (a simulated world, a study's trained runs) depends on the order, and a subset can cost up to its files."""
    files: dict[str, float] = {}
    for table in (coverage["durations"], coverage["setups"]):
        for node, seconds in table.items():
            file = node.split("::", 1)[0]
            files[file] = files.get(file, 0.0) + seconds
    return sum(files.get(f, 0.0) for f in {n.split("::", 1)[0] for n in tests})


def run_mutant(mutant: Mutant, scratch: Path, coverage: dict, group: str) -> dict:
    tests = tests_for(mutant, coverage, group)
    subprocess_tests = SUBPROCESS_TESTS.get(group, [])
    if not tests and not subprocess_tests:
        return {"status": "uncovered", "tests": 0, "seconds": 0.0}
    path = scratch / "src" / "geovario" / mutant.file
    original = path.read_text()
    path.write_text(original[: mutant.start] + mutant.replacement + original[mutant.end :])
    log = scratch / ".mutant.log"
    code, seconds = 0, 0.0
    try:
        if tests:
            pid = run_pytest_in_child(scratch, [*PYTEST_ARGS, "-x", "-p", "no:randomly", f"--basetemp={scratch / '.pytest-tmp'}", *tests],
                                      log, threads=THREADS_PER_JOB)
            code, seconds = wait(pid, 120 + 5 * time_budget(tests, coverage))  # far longer than the tests take: a loop
        if code == 0 and subprocess_tests:  # survived the fast tests (or none reach it): the multi-process ones next
            stage = [*PYTEST_ARGS, "-x", "-m", "not slow", f"--basetemp={scratch / '.pytest-tmp'}", *subprocess_tests]
            pid = run_pytest_in_child(scratch, stage, log, threads=THREADS_PER_JOB)
            code, more = wait(pid, 900)
            seconds += more
    finally:
        path.write_text(original)
    collection_error = code == 4 and "ERROR collecting" in log.read_text(errors="replace")
    if code is None:
        status = "timeout"
    elif code == 0:
        status = "survived" if tests else "uncovered"
    elif code in (1, 2, 3) or collection_error:  # a failure, an error, or a test module the mutant breaks on import
        status = "killed"
    elif code < 0:  # the tests' process died of a signal before the time limit: a crash, or the kernel's OOM killer
        status = "killed"
    else:
        status = f"error-{code}"
    result = {"status": status, "tests": len(tests), "seconds": round(seconds, 2)}
    if status == "killed":
        result["killed_by"] = _first_failure(log) if code > 0 else f"the tests' process died of signal {-code} (a crash, or out of memory)"
    return result


def _first_failure(log: Path) -> str:
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" ", 1)[1].split(" - ")[0]
    return "collection or import error"


# --- results, scheduling, report ---


def load_state() -> dict:
    path = STATE / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def save_state(state: dict) -> None:
    tmp = STATE / "results.json.tmp"
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, STATE / "results.json")


def run(groups: list[str], jobs: int, survivors_only: bool, limit: int | None) -> None:
    STATE.mkdir(exist_ok=True)
    tree = tree_hash()
    state = load_state()
    if state.get("tree") != tree:
        previous = state if survivors_only else {}
        state = {"tree": tree, "started": datetime.datetime.now().isoformat(timespec="seconds"), "results": {}}
        if survivors_only and previous.get("results"):
            # Tests only grew since: a killed mutant stays killed, and one judged equivalent (with a reason, in
            # scripts/mutation_equivalents.yaml) stays a survivor; other survivors and uncovered ones run again.
            equivalents = read_equivalents()
            state["results"] = {k: v for k, v in previous["results"].items() if v["status"] == "killed" or k in equivalents}
            state["carried_from"] = previous.get("tree")
    shared = REPO.parent / "shared"
    if "GEOVARIO_SHARED_DIR" not in os.environ and shared.is_dir():
        os.environ["GEOVARIO_SHARED_DIR"] = str(shared)  # the scratch copies do not sit beside ../shared
    preload()
    global THREADS_PER_JOB
    THREADS_PER_JOB = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
    scratches = [make_scratch(STATE / f"scratch-{k}") for k in range(jobs)]
    coverage_path = STATE / "coverage-map.json"
    coverage = json.loads(coverage_path.read_text()) if coverage_path.is_file() else {}
    # The map needs only the test files of the groups asked for; a map of other files (or an older tree) is redone.
    needed = sorted({f"tests/{name}" for group in groups for name in TEST_FILES[group]})
    if coverage.get("tree") != tree or not set(needed) <= set(coverage.get("test_files", needed)):
        coverage = collect_coverage(scratches[0], needed) | {"tree": tree, "test_files": needed}
        coverage_path.write_text(json.dumps(coverage))
    todo = []
    for group, files in target_files(groups).items():
        for relpath in files:
            for mutant in mutants_of(relpath):
                if mutant.id not in state["results"]:
                    todo.append((group, mutant))
    if limit:
        todo = todo[:limit]
    print(f"{len(todo)} mutants to run ({len(state['results'])} done at this tree), {jobs} at a time", flush=True)
    running: dict[int, tuple] = {}
    free = list(range(jobs))
    started = time.monotonic()
    done = 0
    # Each slot runs one mutant at a time in a worker process of its own (forked from this one, so the
    # imports are shared); the worker forks again per mutant.
    while todo or running:
        while todo and free:
            slot = free.pop()
            group, mutant = todo.pop(0)
            pid = os.fork()
            if pid == 0:
                result = run_mutant(mutant, scratches[slot], coverage, group)
                (scratches[slot] / ".result.json").write_text(json.dumps(result))
                os._exit(0)
            running[pid] = (slot, group, mutant)
        pid, status = os.wait()
        slot, group, mutant = running.pop(pid)
        free.append(slot)
        result_file = scratches[slot] / ".result.json"
        result = json.loads(result_file.read_text()) if result_file.is_file() else {"status": "error-harness"}
        result_file.unlink(missing_ok=True)
        state["results"][mutant.id] = {"group": group, **asdict(mutant), **result}
        done += 1
        save_state(state)
        rate = (time.monotonic() - started) / done
        print(f"[{done}/{done + len(todo) + len(running)}] {result['status']:9} {mutant.file}:{mutant.line} {mutant.kind} "
              f"{mutant.original!r}->{mutant.replacement!r} ({result.get('seconds', 0):.1f} s; ~{rate * len(todo) / 60:.0f} min left)",
              flush=True)
    state["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    save_state(state)


def read_equivalents() -> dict[str, str]:
    if not EQUIVALENTS.is_file():
        return {}
    import yaml

    data = yaml.safe_load(EQUIVALENTS.read_text()) or {}
    return {str(k): str(v) for k, v in data.items()}


def commit_of_tree() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "src", "tests"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return head + (" with uncommitted changes" if dirty else "")


def report(groups: list[str], command: str, report_command: str = "python scripts/mutate.py --report") -> str:
    state = load_state()
    results = state.get("results", {})
    equivalents = read_equivalents()
    current = {m.id: (group, m) for group, files in target_files(groups).items() for f in files for m in mutants_of(f)}
    rows, survivors, missing = [], [], 0
    totals = dict(mutants=0, killed=0, equivalent=0, survived=0)
    for group in groups:
        counts = dict(mutants=0, killed=0, equivalent=0, survived=0)
        for ident, (g, mutant) in current.items():
            if g != group:
                continue
            counts["mutants"] += 1
            result = results.get(ident)
            if result is None:
                missing += 1
                continue
            if result["status"] in ("killed", "timeout"):
                counts["killed"] += 1
            elif ident in equivalents:
                counts["equivalent"] += 1
                survivors.append((mutant, result, equivalents[ident]))
            else:
                counts["survived"] += 1
                survivors.append((mutant, result, None))
        for key in totals:
            totals[key] += counts[key]
        rows.append((group, counts))

    def rate(c):
        judged = c["mutants"] - c["equivalent"]
        return f"{100 * c['killed'] / judged:.1f} %" if judged else "-"

    lines = ["# Mutation testing", "",
             f"Date: {datetime.date.today().isoformat()}. Tree: {state.get('tree', '?')} (src/, tests/, configs/), "
             f"commit {commit_of_tree()}. Run started {state.get('started', '?')}, finished {state.get('finished', 'not yet')}.", "",
             "Command (on this repository, 2 cores):", "", "```bash", command, report_command, "```", "",
             "Each mutant is one planted bug; the fast tests that run its line (from a coverage map of the suite) must fail. "
             "Kill rate = killed / (mutants - equivalent). A survivor is equivalent only with a reason below.", "",
             "| group | mutants | killed | equivalent | survived | kill rate |", "|---|---:|---:|---:|---:|---:|"]
    for group, c in rows:
        lines.append(f"| {group} | {c['mutants']} | {c['killed']} | {c['equivalent']} | {c['survived']} | {rate(c)} |")
    lines.append(f"| **all** | {totals['mutants']} | {totals['killed']} | {totals['equivalent']} | {totals['survived']} | **{rate(totals)}** |")
    if missing:
        lines += ["", f"{missing} mutants of the current source have no result yet (the run is incomplete)."]
    lines += ["", "## Survivors", "", "| mutant | where | change | judged |", "|---|---|---|---|"]
    for mutant, result, reason in sorted(survivors, key=lambda s: (s[0].file, s[0].line)):
        change = f"`{mutant.original.strip()}` → `{mutant.replacement.strip() or '(removed)'}`".replace("|", "\\|")
        judged = f"equivalent: {reason}" if reason else f"**not killed** ({result['status']})"
        lines.append(f"| {mutant.id} | {mutant.file}:{mutant.line} ({mutant.function}) | {change} | {judged.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", nargs="*", metavar="GROUP",
                        help=f"which groups to mutate (default: all of {', '.join(MODULES)})")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at a time (default 1; the machines have 2 cores)")
    parser.add_argument("--list", action="store_true", help="print the mutants and their counts, run nothing")
    parser.add_argument("--survivors", action="store_true",
                        help="after adding tests: keep the previous run's kills (and survivors judged equivalent) and rerun the other survivors at the new tree")
    parser.add_argument("--limit", type=int, help="run at most this many mutants (a smoke test of the harness)")
    parser.add_argument("--report", action="store_true", help=f"write {REPORT.relative_to(REPO)} from the results")
    parser.add_argument("--command", default="python scripts/mutate.py --jobs 2", help="the command quoted in the report")
    parser.add_argument("--report-to", type=Path, default=REPORT, metavar="FILE",
                        help=f"where --report writes (default {REPORT.relative_to(REPO)}; another file for a report of some groups)")
    args = parser.parse_args(argv)
    groups = args.groups or list(MODULES)
    unknown = [g for g in groups if g not in MODULES]
    if unknown:
        parser.error(f"unknown group {unknown[0]!r}; choose from {', '.join(MODULES)}")
    if args.list:
        total = 0
        for group, files in target_files(groups).items():
            for relpath in files:
                found = mutants_of(relpath)
                total += len(found)
                for m in found:
                    print(f"{m.id} {relpath}:{m.line} {m.kind:18} {m.original!r} -> {m.replacement!r}   | {m.text[:100]}")
        print(f"{total} mutants")
        return 0
    if args.report:
        asked = "" if args.report_to == REPORT else f" {' '.join(groups)} --report-to {args.report_to}"
        args.report_to.write_text(report(groups, args.command, f"python scripts/mutate.py --report{asked}"))
        print(f"wrote {args.report_to}")
        return 0
    run(groups, args.jobs, args.survivors, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
