"""Property-based checks of the command line (issue: reliability item 6): every generated bad
flag value or YAML configuration ends in exit code 2 with one line on stderr, no traceback, and
nothing written.

Only parsing and validation run: the commands' actions are replaced by one that fails the test, so
a bad input that validation lets through is reported instead of starting any work.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gas_solver import cli
from gas_solver.schedules import GRID_KINDS
from gas_solver.solvers.registry import SOLVERS

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A valid invocation of each cheap command; each test spoils one value.
BASE = {
    "teacher": {"--model": "gmm-ring", "--out": "t", "--device": "cpu"},
    "train": {"--teacher": "t", "--out": "r", "--device": "cpu"},
    "sample": {"--model": "gmm-ring", "--solver": "ddim:nfe=2", "--out": "s", "--device": "cpu"},
    "compare": {"--solvers": "ddim:nfe=2", "--model": "gmm-ring", "--device": "cpu"},
}
INT_FLAGS = [
    ("teacher", "--batch-size"), ("teacher", "--shard-size"), ("train", "--nfe"),
    ("train", "--iterations"), ("train", "--batch-size"), ("train", "--seed"),
    ("sample", "--batch-size"), ("compare", "--nfe"),
]  # fmt: skip
FLOAT_FLAGS = [("train", "--lr"), ("train", "--ema-decay"), ("train", "--t-eps")]

# Text a shell can pass (no NUL, no lone surrogates).
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


class Accepted(AssertionError):
    """A bad input passed validation."""


def _refuse(config):
    raise Accepted(f"validation accepted {config!r}")


@pytest.fixture(autouse=True, scope="module")
def _no_actions():
    """Replace every command's action: only parsing and validation may run."""
    real = cli.commands
    cli.commands = lambda: {
        name: (text, cls, _refuse) for name, (text, cls, _) in real().items()
    }  # fmt: skip
    yield
    cli.commands = real


def _run(argv: list[str]) -> tuple[int, str, list[str]]:
    """Exit code, stderr and the files left, of ``gas-solver ARGV`` in a fresh empty folder."""
    err = io.StringIO()
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stderr(err):
        cwd = os.getcwd()
        os.chdir(folder)
        try:
            code = cli.main(argv)
        except SystemExit as exit_:
            code = exit_.code
        finally:
            os.chdir(cwd)
        left = [str(p.relative_to(folder)) for p in Path(folder).rglob("*")]
    return code, err.getvalue(), left


def _argv(command: str, **changes: str) -> list[str]:
    flags = {**BASE[command], **changes}
    return [command, *(f"{flag}={value}" for flag, value in flags.items())]


def _assert_refused(argv: list[str]) -> None:
    code, err, left = _run(argv)
    assert code == 2, (argv, err)
    assert err.count("\n") == 1 and err.endswith("\n") and "error:" in err, (argv, err)
    assert "Traceback" not in err
    assert left == [], (argv, left)


@pytest.mark.parametrize("command", sorted(BASE))
def test_the_base_invocations_pass_validation(command):
    with pytest.raises(Accepted):
        _run(_argv(command))


def _not_an_int(text: str) -> bool:
    return re.fullmatch(r"[+-]?[0-9]+", text) is None and text.lower() not in ("none", "null")


LONG_NUMBERS = st.integers(min_value=20, max_value=6000).map(lambda n: "9" * n)
"""Integer text over int64, up to past the 4300 digits Python's ``int()`` refuses to read."""
BAD_INTS = st.one_of(
    TEXT.filter(_not_an_int),
    st.integers(min_value=2**63).map(str),
    st.floats(allow_nan=True).filter(lambda x: not float(x).is_integer()).map(repr),
    st.integers(min_value=0, max_value=99).map(lambda n: f"{n}".translate(ARABIC)),
    LONG_NUMBERS,
)
ARABIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


@SETTINGS
@given(where=st.sampled_from(INT_FLAGS), value=BAD_INTS)
def test_bad_integer_flags_are_refused(where, value):
    command, flag = where
    _assert_refused(_argv(command, **{flag: value}))


@SETTINGS
@given(
    where=st.sampled_from(FLOAT_FLAGS),
    value=st.one_of(
        TEXT.filter(lambda t: re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", t)
                    is None and t.lower() not in ("none", "null")),
        st.sampled_from(["nan", "inf", "-inf", "1e999", "NaN"]),
    ),
)  # fmt: skip
def test_bad_float_flags_are_refused(where, value):
    command, flag = where
    _assert_refused(_argv(command, **{flag: value}))


@SETTINGS
@given(
    command=st.sampled_from(sorted(BASE)),
    value=st.one_of(st.integers(max_value=0), st.integers(min_value=4097)),
)
def test_batch_sizes_out_of_range_are_refused(command, value):
    if command == "compare":
        command = "sample"
    _assert_refused(_argv(command, **{"--batch-size": str(value)}))


@SETTINGS
@given(
    command=st.sampled_from(sorted(BASE)),
    value=TEXT.filter(lambda t: re.fullmatch(r"auto|cpu(:0)?|cuda(:[0-9]+)?|mps", t) is None),
)
def test_bad_devices_are_refused(command, value):
    _assert_refused(_argv(command, **{"--device": value}))


SEEDS = r"\s*[0-9]+\s*(-\s*[0-9]+\s*)?"


@SETTINGS
@given(
    command=st.sampled_from(["teacher", "sample", "compare"]),
    value=st.one_of(
        TEXT.filter(lambda t: re.fullmatch(rf"{SEEDS}(,{SEEDS})*", t) is None),
        st.tuples(st.integers(1, 10**6), st.integers(1, 10**6)).map(
            lambda ab: f"{max(ab)}-{min(ab) - 1}"  # a range that goes down
        ),
        st.integers(0, 10**6).map(lambda n: f"{n},{n}"),  # a seed twice
        st.integers(min_value=2**63).map(str),
        LONG_NUMBERS,
        LONG_NUMBERS.map(lambda n: f"0-{n}"),
    ),
)
def test_bad_seed_lists_are_refused(command, value):
    _assert_refused(_argv(command, **{"--seeds": value}))


@SETTINGS
@given(
    value=st.one_of(
        TEXT.filter(lambda t: t.split(":")[0] not in SOLVERS and not t.endswith(".safetensors")),
        st.one_of(st.integers(max_value=0), st.integers(min_value=10_001)).map(
            lambda n: f"ddim:nfe={n}"
        ),
        st.sampled_from(sorted(SOLVERS)).flatmap(
            lambda name: TEXT.filter(lambda t: "=" not in t).map(lambda t: f"{name}:{t}")
        ),
    )
)
def test_bad_solver_specs_are_refused(value):
    try:  # an existing path is read as a trained solver, when first used
        if Path(value).exists():
            return
    except OSError:  # a name the file system refuses (too long) is no file either
        pass
    _assert_refused(_argv("sample", **{"--solver": value}))


# -- YAML ------------------------------------------------------------------------------------------
YAML_SCALARS = st.one_of(st.booleans(), st.integers(), st.floats(), TEXT, st.none())
YAML_VALUES = st.recursive(
    YAML_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                          st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=6,
)  # fmt: skip
NOT_INT = st.one_of(
    st.booleans(),
    st.floats().filter(lambda x: not float(x).is_integer()),
    st.integers(min_value=2**63),
    st.lists(YAML_SCALARS, max_size=2),
    st.dictionaries(TEXT, YAML_SCALARS, min_size=1, max_size=2),
    TEXT.filter(_not_an_int),
    LONG_NUMBERS,
)
NOT_FLOAT = st.one_of(
    st.booleans(),
    st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    st.lists(YAML_SCALARS, max_size=2),
    st.dictionaries(TEXT, YAML_SCALARS, min_size=1, max_size=2),
    TEXT.filter(lambda t: re.fullmatch(r"[+-]?[0-9.eE+-]+", t) is None and t.lower() != "null"),
)
NOT_TEXT = st.one_of(
    st.booleans(),
    st.lists(YAML_SCALARS, max_size=2),
    st.dictionaries(TEXT, YAML_SCALARS, min_size=1, max_size=2),
)
TRAIN_FIELDS = {
    "nfe": NOT_INT, "iterations": NOT_INT, "batch_size": NOT_INT, "seed": NOT_INT,
    "train_size": NOT_INT, "lr": NOT_FLOAT, "ema_decay": NOT_FLOAT, "adv_weight": NOT_FLOAT,
    "out": NOT_TEXT, "model": NOT_TEXT, "teacher": NOT_TEXT, "device": NOT_TEXT,
    "loss": st.one_of(NOT_TEXT, TEXT.filter(lambda t: t not in ("gs", "gas"))),
    "init_grid": st.one_of(NOT_TEXT, TEXT.filter(lambda t: t not in GRID_KINDS)),
}  # fmt: skip


def _run_yaml(document: object) -> None:
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.yaml"
        config.write_text(yaml.safe_dump(document, allow_unicode=True))
        _assert_refused(["train", "--config", str(config)])


@SETTINGS
@given(data=st.data(), field=st.sampled_from(sorted(TRAIN_FIELDS)))
def test_yaml_values_of_the_wrong_type_are_refused(data, field):
    document = {"teacher": "t", "out": "r", "device": "cpu"}
    document[field] = data.draw(TRAIN_FIELDS[field], label=field)
    _run_yaml(document)


@SETTINGS
@given(
    document=st.one_of(
        st.dictionaries(TEXT.filter(lambda k: k.isidentifier() and k.startswith("x")), YAML_VALUES,
                        min_size=1, max_size=3).map(lambda d: {"teacher": "t", **d}),
        st.lists(YAML_VALUES, min_size=1, max_size=3),
        st.one_of(st.integers(), TEXT.filter(lambda t: t.strip() != "")),
    )
)  # fmt: skip
def test_yaml_documents_that_are_not_train_configs_are_refused(document):
    _run_yaml(document)
