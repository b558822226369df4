"""One validation layer for every file read back (issue #29): solver metadata against its schema,
teacher manifests against their shards, non-finite teacher items, the teacher set a checkpoint
was trained on, and the sweep's state. Each refusal is one line naming the file and the field."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from safetensors.torch import save as safetensors_bytes

from gas_solver.cli import main
from gas_solver.commands import sweep
from gas_solver.commands.train import TrainConfig, run_train
from gas_solver.config import load_config
from gas_solver.data.teacher_format import shard_metadata, shard_name
from gas_solver.data.teacher_set import TeacherSet
from gas_solver.errors import CorruptFileError, GasSolverError
from gas_solver.models.loading import load_model
from gas_solver.runtime import load_checkpoint_file, save_checkpoint_file, tensors_digest
from gas_solver.validation import Invalid, integer, list_of, mapping, parse_json
from teacher_files import copy_files, edit_manifest

TRAIN = ["--nfe", "2", "--iterations", "4", "--batch-size", "8", "--train-size", "40",
         "--val-size", "20", "--val-every", "0", "--checkpoint-every", "2", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def run(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    overrides = dict(teacher=str(teacher), out=str(out), nfe=2, iterations=2, batch_size=8,
                     train_size=40, val_size=20, val_every=0, checkpoint_every=2, device="cpu")  # fmt: skip
    run_train(load_config(TrainConfig, overrides=overrides), progress=False)
    return out


def _cli(capsys, *args):
    """Run the CLI; its exit code and stderr (which must be one line, without a traceback)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code != 2 or (err.count("\n") == 1 and "Traceback" not in err), err
    return code, err


# -- 1. solver metadata --------------------------------------------------------------------------
def _reseal(source, target, edit=None, text=None):
    """``source`` with its metadata edited (or replaced by ``text``) and the checksum recomputed:
    what anyone can write, so the schema, not the checksum, must refuse it."""
    with safe_open(str(source), framework="pt") as f:
        meta_text = f.metadata()["gas_solver"]
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    if text is None:
        meta = json.loads(meta_text)
        edit(meta)
        text = json.dumps(meta)
    header = {"gas_solver": text, "gas_solver_sha256": tensors_digest(text, tensors)}
    save_file(tensors, str(target), metadata=header)
    return target


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(nfe=10**12), "key 'nfe' must be an integer from 1 to 100"),
        (lambda m: m.update(nfe=3, init_grid="uniform"), "not those of a GS with nfe=3"),
        (lambda m: m.update(t_eps="small"), "key 't_eps' must be a finite number in (0, 1)"),
        (lambda m: m.update(training="x"), "key 'training' must be a JSON object"),
        (lambda m: m.update(model_source=5), "key 'model_source' must be null or a string"),
        (lambda m: m["training"].update(config=[]), "key 'training.config' must be a JSON obj"),
        (lambda m: m.update(init_grid=[1.0, 0.001]), "key 'init_grid' must hold nfe + 1 = 3"),
        (lambda m: m.update(init_grid="x" * 10**4), "key 'init_grid' must be one of"),
        (lambda m: m.pop("model"), "key 'model' is missing"),
        (lambda m: m["teacher"].update(seeds=[0, 1]), "key 'teacher.seeds' must be null or a"),
        (lambda m: m.update(theory_solver="ddim:nfe=7"), "does not make a solver"),
    ],
    ids=[
        "huge-nfe",
        "nfe-vs-shapes",
        "t_eps",
        "training",
        "model_source",
        "config",
        "grid",
        "long-grid",
        "no-model",
        "teacher-seeds",
        "theory-solver",
    ],  # fmt: skip
)
def test_resealed_solver_metadata_is_checked_field_by_field(run, tmp_path, capsys, edit, message):
    bad = _reseal(run / "solver.safetensors", tmp_path / "bad.safetensors", edit)
    code, err = _cli(capsys, "sample", "--solver", bad, "--seeds", "0-3", "--out", tmp_path / "s")
    assert code == 2 and message in err and str(bad) in err
    assert len(err) < 700  # quotes at most ~200 characters of the value
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").glob("*.npz"))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip
"""Any JSON value a writer could put in a field."""


def _key_paths(value, prefix=(), depth=2, items=False):
    """The key paths of a JSON object down to ``depth`` levels (``items``: list indices too)."""
    children = enumerate(value) if isinstance(value, list) else value.items()
    for key, child in children:
        yield (*prefix, key)
        if (isinstance(child, dict) or items and isinstance(child, list)) and depth > 1:
            yield from _key_paths(child, (*prefix, key), depth - 1, items)


def _with_any_value(data, tree, paths):
    """``tree`` with the value at one drawn path replaced by a drawn JSON value."""
    path = data.draw(st.sampled_from(sorted(paths, key=str)), label="field")
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = data.draw(JSON_VALUES, label="value")
    return tree


def _works_or_one_line(*args):
    """Run the CLI: it must succeed, or end with exit 2 and one error line under 1 KB, no
    traceback; returns whether it was refused."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in args])
    lines = err.getvalue().strip().splitlines()
    assert code in (0, 2), err.getvalue()
    if code == 2:
        assert "Traceback" not in err.getvalue() and len(lines[-1]) < 1024, lines
        assert lines[-1].startswith(f"gas-solver {args[0]}: error: "), lines
    return code == 2


PROPERTY = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY
@given(data=st.data())
def test_any_resealed_metadata_is_used_or_refused_in_one_line(run, tmp_path, data):
    """Property: a solver file whose metadata field holds any JSON value, re-sealed, is either a
    working solver or refused with one line of at most 1 KB, no traceback, no samples written."""
    with safe_open(str(run / "solver.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["gas_solver"])
    meta = _with_any_value(data, meta, _key_paths(meta))
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    bad = _reseal(run / "solver.safetensors", work / "bad.safetensors", text=json.dumps(meta))
    if _works_or_one_line("sample", "--solver", bad, "--seeds", "0-3", "--out", work / "s"):
        assert not (work / "s" / "samples.npz").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
        ('{"a":' * 40 + "1" + "}" * 40, "nests more than 32 levels"),
        ('{"nfe": NaN}', "NaN is not a JSON number"),
        (json.dumps({"pad": "x" * (5 << 20)}), "more than the"),
    ],
    ids=["recursion", "deep", "nan", "huge"],
)
def test_unparseable_metadata_is_one_line_before_the_checksum(run, tmp_path, capsys, text, message):
    bad = _reseal(run / "solver.safetensors", tmp_path / "bad.safetensors", text=text)
    code, err = _cli(capsys, "sample", "--solver", bad, "--seeds", "0-3", "--out", tmp_path / "s")
    assert code == 2 and message in err and str(bad) in err and "metadata" in err


def test_parse_json_and_schema_report_the_path_of_the_field():
    schema = mapping({"shards": list_of(mapping({"count": integer(1, 9)}))})
    with pytest.raises(Invalid) as caught:
        schema({"shards": [{"count": 1}, {"count": "2"}]})
    assert caught.value.path == "shards[1].count" and 'got "2"' in caught.value.reason
    with pytest.raises(CorruptFileError, match="f.json: its content is not readable JSON"):
        parse_json(b"{", "f.json")
    assert parse_json(b'{"a": [1, 2.5]}', "f.json") == {"a": [1, 2.5]}


# -- 2. the teacher manifest against its shards --------------------------------------------------
@PROPERTY
@given(data=st.data())
def test_any_edited_manifest_trains_or_is_refused_in_one_line(teacher, tmp_path, data):
    """Property: a teacher manifest with any field (or list item) replaced by any JSON value
    trains, or is refused with one line of at most 1 KB, before any checkpoint."""
    manifest = json.loads((teacher / "manifest.json").read_text())
    manifest = _with_any_value(data, manifest, _key_paths(manifest, depth=3, items=True))
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    copy = copy_files(teacher, work)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    if _works_or_one_line("train", "--teacher", copy, "--out", work / "run", *TRAIN):
        assert not (work / "run" / "checkpoint.pt").exists()


def test_edited_manifest_seeds_are_refused_at_open(teacher, tmp_path, capsys):
    copy = copy_files(teacher, tmp_path)
    edit_manifest(copy, lambda m: m.update(seeds="1000000-1000059"))
    code, err = _cli(capsys, "train", "--teacher", copy, "--out", tmp_path / "run", *TRAIN)
    assert code == 2 and "manifest.json: key 'seeds' says \"1000000-1000059\"" in err
    assert 'the shards hold seeds "0-59"' in err
    assert not (tmp_path / "run" / "solver.safetensors").exists()
    with pytest.raises(GasSolverError, match="key 'seeds' says"):  # compare opens it the same way
        TeacherSet(copy)


def test_a_shard_entrys_seeds_must_be_the_shards(teacher, tmp_path):
    copy = copy_files(teacher, tmp_path)
    edit_manifest(copy, lambda m: m["shards"][1].update(seeds="900-919"))
    with pytest.raises(GasSolverError, match=r"key 'shards\[1\].seeds' says \"900-919\""):
        TeacherSet(copy)


def _one_shard_claiming(count):
    def change(manifest):
        manifest.update(num_samples=count, shard_size=count)
        manifest["shards"] = [{**manifest["shards"][0], "count": count}]

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_one_shard_claiming(10**13), "key 'num_samples' must be an integer from 1 to"),
        (_one_shard_claiming(10**9), r"'noise' is \[20, 2\] F32, but .*says \[1000000000, 2\] F32"),
        (lambda m: m["fields"]["noise"].update(shape=[-5]), r"key 'fields.noise.shape\[0\]' must"),
        (lambda m: m["fields"]["noise"].update(shape=[3]), "key 'fields.noise.shape' must equal"),
        (
            lambda m: m["fields"]["noise"].update(dtype="float64"),
            r"'noise' is \[20, 2\] F32, but .* says \[20, 2\] F64",
        ),
        (lambda m: m["fields"].pop("target"), "key 'fields' lacks 'target'"),
        (lambda m: m["fields"]["noise"].update(dtype="Tensor"), "key 'fields.noise.dtype' must"),
    ],
    ids=[
        "1e13-items",
        "1e9-items",
        "negative-shape",
        "other-shape",
        "dtype",
        "no-target",
        "not-a-dtype",
    ],  # fmt: skip
)
def test_manifest_layout_is_checked_against_the_shard_headers(teacher, tmp_path, change, message):
    copy = copy_files(teacher, tmp_path)
    edit_manifest(copy, change)
    with pytest.raises(GasSolverError, match=message) as caught:
        TeacherSet(copy)  # refused at open, before any tensor is allocated
    assert "manifest.json" in str(caught.value) or "shard-00000" in str(caught.value)


def test_a_huge_item_count_is_one_line_from_train(teacher, tmp_path, capsys):
    copy = copy_files(teacher, tmp_path)
    edit_manifest(copy, _one_shard_claiming(10**13))
    code, err = _cli(capsys, "train", "--teacher", copy, "--out", tmp_path / "run", *TRAIN)
    assert code == 2 and "num_samples" in err and "manifest.json" in err


# -- 3. non-finite teacher items -------------------------------------------------------------------
def _reseal_shard(folder, index, change):
    """Change shard ``index``'s tensors and record its new sha256 and size: a set whose shard
    checksums all match."""
    path = folder / shard_name(index)
    tensors = load_file(str(path))
    change(tensors)
    data = safetensors_bytes(tensors, metadata=shard_metadata(index))
    path.write_bytes(data)

    digest = hashlib.sha256(data).hexdigest()
    edit_manifest(folder, lambda m: m["shards"][index].update(sha256=digest, bytes=len(data)))


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_teacher_items_are_refused_before_training(teacher, tmp_path, capsys, value):
    copy = copy_files(teacher, tmp_path)
    _reseal_shard(copy, 1, lambda t: t["target"][3].fill_(value))
    code, err = _cli(capsys, "train", "--teacher", copy, "--out", tmp_path / "run", *TRAIN)
    assert code == 2 and f"{shard_name(1)}: 'target' of item 23 (seed 23;" in err, err
    assert "NaN or infinite" in err and "--lr" not in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# -- 4. provenance -------------------------------------------------------------------------------
def test_the_solver_and_checkpoint_record_the_teacher_sets_digest(teacher, run):
    digest = TeacherSet(teacher).digest
    assert json.loads((run / "solver.json").read_text())["teacher"]["sha256"] == digest
    assert load_checkpoint_file(run / "checkpoint.pt")["teacher"]["sha256"] == digest


def test_resume_on_a_teacher_set_made_again_in_place_is_refused(tmp_path, capsys):
    teacher = ["teacher", "--model", "gmm-ring", "--solver", "ddim:nfe=5", "--out", tmp_path / "t",
               "--device", "cpu"]  # fmt: skip
    assert _cli(capsys, *teacher, "--seeds", "0-59")[0] == 0
    assert (
        _cli(capsys, "train", "--teacher", tmp_path / "t", "--out", tmp_path / "r", *TRAIN)[0] == 0
    )
    assert _cli(capsys, *teacher, "--seeds", "1000-1059", "--overwrite")[0] == 0
    code, err = _cli(capsys, "train", "--teacher", tmp_path / "t", "--out", tmp_path / "r",
                     *TRAIN, "--iterations", "6", "--resume")  # fmt: skip
    assert code == 2 and "was trained on another teacher set" in err
    assert "seeds: checkpoint 0-59, now 1000-1059" in err


def test_a_checkpoint_without_the_record_still_resumes(run, tmp_path, capsys):
    copy = copy_files(run, tmp_path)
    state = load_checkpoint_file(copy / "checkpoint.pt")
    del state["teacher"]
    save_checkpoint_file(copy / "checkpoint.pt", state)
    teacher = json.loads((run / "solver.json").read_text())["teacher"]["path"]
    code, err = _cli(capsys, "train", "--teacher", teacher, "--out", copy, *TRAIN, "--resume")
    assert code == 0, err
    assert json.loads((copy / "solver.json").read_text())["training"]["iteration"] == 4


# -- 5. the sweep's state ------------------------------------------------------------------------
SWEEP = ["sweep", "--model", "gmm-ring", "--nfes", "2", "--classic", "ddim;dpmpp:order=3", "--grids", "uniform",
         "--learned", "gs", "--teacher-seeds", "0-59", "--train-size", "40", "--val-size", "20",
         "--iterations", "2", "--train-batch-size", "8", "--seeds", "50000-50005",
         "--grid-seeds", "60000-60007", "--fid-ref", "none", "--device", "cpu"]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"config": {}, "grids": {"2": {"ddim": "unif', "sweep.json: its content is not readable"),
        ('{"config": {}, "grids": {}, "rows": {"2": [{"name": "gs"}]}}', "key 'rows.2[0].label'"),
        ('{"config": {}, "grids": {"x": {}}, "rows": {}}', "key 'grids.x' is not a valid key"),
    ],
    ids=["cut-short", "row-without-fields", "not-an-nfe"],
)
def test_a_damaged_sweep_state_is_one_line(tmp_path, capsys, text, message):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text(text)
    code, err = _cli(capsys, *SWEEP, "--out", out)
    assert code == 2 and message in err and "delete it" in err


def test_a_row_is_finished_only_when_its_solver_loads(run, tmp_path, caplog):
    folder = copy_files(run, tmp_path)
    assert sweep._finished(folder)
    summary = json.loads((folder / "summary.json").read_text())
    del summary["seconds"]
    (folder / "summary.json").write_text(json.dumps(summary))
    assert sweep._train_seconds(folder / "summary.json") is None  # left out, not a KeyError
    (folder / "solver.safetensors").unlink()
    assert not sweep._finished(folder)


def test_a_sweep_trains_again_a_row_whose_solver_is_gone(teacher, run, tmp_path):
    config = load_config(
        sweep.SweepConfig,
        overrides={
            "model": "gmm-ring",
            "out": str(tmp_path),
            "teacher_seeds": "0-59",
            "train_size": 40,
            "val_size": 20,
            "iterations": 2,
            "train_batch_size": 8,
            "init_solver": "dpmpp:order=3",
            "device": "cpu",
        },  # fmt: skip
    )
    (tmp_path / "nfe2").mkdir()
    folder = copy_files(run, tmp_path / "nfe2")
    folder = folder.rename(tmp_path / "nfe2" / "gs")
    (folder / "solver.safetensors").unlink()  # a finished run whose solver is gone
    model = load_model("gmm-ring", "cpu")
    found = sweep._trained(config, model, TeacherSet(teacher), 2, {}, "gs", progress=False)
    assert found == folder and sweep._finished(folder)
