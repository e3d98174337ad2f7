"""Bad inputs, hostile files and faults: each gives one clear error naming the file or option
(or the right behaviour), and nothing outside the output folder changes.

Generated cases (``hypothesis``): checkpoint bytes, vertebra ids, option values. The resume
kills are in ``test_resume_exact.py``; docs/BENCHMARKS.md (RELIABILITY) lists the cases.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import test as test_script
import train as train_script
from cam.heatmaps import load_classifier
from data import create_dataset, set_epoch
from data.check import check_dataset
from data.vertebra_dataset import VertebraDataset, load_splits
from models import create_model
from options.train_options import TrainOptions
from util.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from util.cli import run_main, worker_error_message
from util.geometry import inside, split_key, volume_path
from util.io import OutputError, staged_dir
from util.nifti_io import load_nifti, save_nifti
from util.report import write_html
from util.run_dir import RunDir, RunDirError, shield_from_stop_signals

ROOT = Path(__file__).resolve().parents[1]
SPLITS = {"train": {"p1_20": 0, "p2_20": 0}, "val": {"p3_20": 0}, "test": {"p4_20": 0}}
FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


# ----------------------------------------------------------------------------- helpers
def snapshot(folder: Path, *outputs: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file under ``folder`` outside the ``outputs`` folders."""
    out = {}
    for p in folder.rglob("*"):
        if p.is_file() and not any(o == p or o in p.parents for o in outputs):
            st_ = p.stat()
            out[str(p.relative_to(folder))] = (st_.st_size, st_.st_mtime_ns)
    return out


def cli(main, argv: list[str], capsys) -> tuple[int, str]:
    """Run an entry point as the command line does (``run_main``): (exit status, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_main(lambda: main(argv))
    return exc.value.code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _common(root: Path, tmp: Path, name: str = "run", netg: str = "gan") -> list[str]:
    """Flags of a tiny CPU run (32 px, no worker processes) under ``tmp/ckpt/<name>``."""
    tiny = "--img_size 32 --gpu_ids -1 --num_workers 0 --batch_size 2"
    return [
        *("--dataroot", str(root), "--checkpoints_dir", str(tmp / "ckpt")),
        *("--name", name, "--netG_type", netg, *tiny.split()),
    ]


def make_checkpoint(root: Path, tmp: Path, *extra: str, netg: str = "gan") -> Path:
    """An untrained model's ``latest_checkpoint.pth`` under ``tmp/ckpt/run`` (no training)."""
    with contextlib.redirect_stdout(io.StringIO()):
        opt = TrainOptions([*_common(root, tmp, netg=netg), *extra]).parse()
        model = create_model(opt)
        model.setup(opt)
        with warnings.catch_warnings():  # (an lr step without training)
            warnings.simplefilter("ignore", UserWarning)
            model.update_learning_rate()
        model.epoch = 1
        return model.save_networks(1)


@pytest.fixture
def root(vertebra_root_factory):
    return vertebra_root_factory(SPLITS, size=64, depth=16)


class Payload:
    """A pickle that, when loaded unsafely, creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ----------------------------------------------------------------------------- safe loading
def test_malicious_checkpoint_is_refused_before_its_payload_runs(root, tmp_path, capsys):
    run = make_checkpoint(root, tmp_path).parent
    marker = tmp_path / "pwned"
    torch.save({"format": 2, "networks": Payload(marker)}, run / "latest_checkpoint.pth")
    before = snapshot(tmp_path, tmp_path / "results")
    argv = [*_common(root, tmp_path), "--results_dir", str(tmp_path / "results")]
    code, err = cli(test_script.main, argv, capsys)
    line = one_error_line(err)
    assert code == 2 and str(run / "latest_checkpoint.pth") in line and "could run code" in line
    assert not marker.exists()
    assert snapshot(tmp_path) == before  # not even a partial report


def test_malicious_classifier_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "classifier.pth"
    torch.save({"format": 2, "classifier": {}, "config": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"classifier\.pth.*could run code"):
        load_classifier(path)
    assert not marker.exists()


@FUZZ
@given(data=st.binary(max_size=600))
def test_fuzzed_checkpoint_bytes_are_refused_by_name(tmp_path, data):
    path = tmp_path / "fuzz_checkpoint.pth"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="fuzz_checkpoint.pth"):
        load_checkpoint(path)


@pytest.fixture(scope="module")
def valid_checkpoint_bytes() -> bytes:
    buf = io.BytesIO()
    ckpt = {"format": 2, "epoch": 3, "w": torch.arange(6.0), "rng": (3, (1, 2), None)}
    torch.save(ckpt, buf)
    return buf.getvalue()


@FUZZ
@given(data=st.data())
def test_mutated_checkpoints_load_or_are_refused_by_name(tmp_path, valid_checkpoint_bytes, data):
    raw = bytearray(valid_checkpoint_bytes)
    cut = data.draw(st.integers(0, len(raw)), label="truncate at")
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255))))
    for pos, value in flips:
        raw[pos] = value
    path = tmp_path / "mutated_checkpoint.pth"
    path.write_bytes(bytes(raw[:cut]) if data.draw(st.booleans()) else bytes(raw))
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        assert "mutated_checkpoint.pth" in str(exc)
    else:
        assert isinstance(ckpt, dict) and ckpt["format"] in (1, 2)


def test_checkpoint_with_objects_outside_the_allow_list_is_not_written(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['opt'\] is a argparse.Namespace"):
        save_checkpoint(tmp_path / "x.pth", {"opt": __import__("argparse").Namespace()})
    assert not list(tmp_path.iterdir())


def test_format_1_checkpoint_still_resumes_with_the_missed_lr_step(root, tmp_path):
    """Files of the previous format: numpy RNG state as an array (allow-listed), schedulers
    saved before their epoch's step (made up on load)."""
    path = make_checkpoint(root, tmp_path)
    ckpt = load_checkpoint(path)
    for sched in ckpt["schedulers"]:
        sched["last_epoch"], sched["_step_count"] = 0, 1
    kind, key, pos, gauss, cached = ckpt["rng"]["numpy"]
    ckpt["rng"]["numpy"] = (kind, key.numpy().astype(np.uint32), pos, gauss, cached)
    ckpt["format"] = 1
    torch.save(ckpt, path.parent / "latest_checkpoint.pth")
    with contextlib.redirect_stdout(io.StringIO()):
        argv = [*_common(root, tmp_path), "--continue_train", "--n_epochs", "1"]
        opt = TrainOptions([*argv, "--n_epochs_decay", "3"]).parse()
        model = create_model(opt)
        model.setup(opt)
    assert opt.epoch_count == 2
    # epoch 2 of 1 + 3 decaying ones: 3/4 of the initial lr (the file's 1 epoch behind: 4/4)
    assert model.optimizers[0].param_groups[0]["lr"] == pytest.approx(2e-4 * 3 / 4, rel=1e-12)


# ----------------------------------------------------------------------------- confined paths
@FUZZ
@given(key=st.text(alphabet="ab_./\\-09.", max_size=16) | st.text(max_size=12))
def test_fuzzed_ids_are_refused_or_stay_inside_the_folder(tmp_path, key):
    try:
        pid, vid = split_key(key)
    except ValueError as exc:
        assert repr(key) in str(exc)
        return
    assert "/" not in pid and "\\" not in pid and ".." not in pid and vid >= 0
    path = volume_path(tmp_path, "CT", key)
    assert inside(path, tmp_path / "CT").parent == (tmp_path / "CT").resolve()


def test_id_leading_outside_the_data_root_names_the_split_file(root):
    evil = "../../../../tmp/x/evil_20"
    (root / "vertebra_data.json").write_text(json.dumps({"train": {evil: 0}}))
    with pytest.raises(ValueError, match=r"vertebra_data\.json.*no path separators"):
        load_splits(root)


def test_report_refuses_an_image_path_outside_its_folder(tmp_path):
    images = {"../../escape_20": {"output": np.zeros((4, 4)), "ssim_patch": 0.5}}
    with pytest.raises(ValueError, match="outside the output folder"):
        write_html(tmp_path / "out", "t", [], images, {})
    assert not list(tmp_path.rglob("*.png"))


@pytest.mark.parametrize(
    "flag,value",
    [("--name", "../escape"), ("--name", "/tmp/abs"), ("--name", "."), ("--epoch", "../x")],
)
@pytest.mark.parametrize("entry", ["train", "test"])
def test_names_leading_outside_the_output_folder_are_refused(
    root, tmp_path, capsys, entry, flag, value
):
    argv = [*_common(root, tmp_path), "--results_dir", str(tmp_path / "results"), flag, value]
    if entry == "train":
        argv = [a for a in argv if a not in ("--results_dir", str(tmp_path / "results"))]
    before = snapshot(tmp_path)
    main = test_script.main if entry == "test" else train_script.main
    code, err = cli(main, argv, capsys)
    assert code == 2 and flag in one_error_line(err) and value in one_error_line(err)
    assert snapshot(tmp_path) == before and not (tmp_path / "ckpt").exists()


# ----------------------------------------------------------------------------- run protection
def test_second_process_on_a_run_dir_is_refused_naming_the_holder(tmp_path):
    with RunDir(tmp_path / "run", resume=False):
        with pytest.raises(RunDirError) as exc:
            RunDir(tmp_path / "run", resume=True).__enter__()
    message = str(exc.value)
    assert f"pid {os.getpid()}" in message and socket.gethostname() in message
    assert str(tmp_path / "run") in message
    assert not (tmp_path / "run").exists()  # created by the first, left empty, removed


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    info = {"pid": dead.pid, "host": socket.gethostname(), "started": 0, "command": "train.py"}
    (run / "run.lock").write_text(json.dumps(info))
    with RunDir(run, resume=True):
        assert json.loads((run / "run.lock").read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"taking over the lock of {run} from pid {dead.pid}" in err
    assert not (run / "run.lock").exists()


def test_new_run_into_an_existing_run_is_refused_then_overwritten(root, tmp_path, capsys):
    run = make_checkpoint(root, tmp_path).parent
    (run / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    argv = [*_common(root, tmp_path), "--n_epochs", "1", "--n_epochs_decay", "0"]
    code, err = cli(train_script.main, argv, capsys)
    line = one_error_line(err)
    assert code == 2 and str(run) in line and "--continue_train" in line and "--overwrite" in line
    assert snapshot(tmp_path) == before
    # both flags at once contradict each other
    code, err = cli(train_script.main, [*argv, "--continue_train", "--overwrite"], capsys)
    assert code == 2 and "--overwrite" in one_error_line(err)
    # --overwrite: the old run's files go, files it did not write stay
    with RunDir(run, resume=False, overwrite=True):
        assert sorted(p.name for p in run.iterdir()) == ["notes.txt", "run.lock"]
    assert "kept files it did not write: notes.txt" in capsys.readouterr().out


def test_orphaned_temporary_files_are_removed_at_the_start(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "web").mkdir(parents=True)
    (run / ".latest_checkpoint.pth.999999-abc123.tmp").write_bytes(b"x" * 2048)
    (run / "web" / ".index.html.k2j3h4.tmp").write_text("half")  # older naming, no pid
    (run / "latest_checkpoint.pth").write_bytes(b"keep")
    with RunDir(run, resume=True):
        assert sorted(p.name for p in run.rglob("*")) == [
            "latest_checkpoint.pth",
            "run.lock",
            "web",
        ]
    assert "removed 2 temporary file(s)" in capsys.readouterr().out


# ----------------------------------------------------------------------------- compatibility
@pytest.mark.parametrize(
    "netg,used,flag",
    [
        ("gan", ["--netG_type", "diffusion"], "--netG_type"),
        ("gan", ["--img_size", "64"], "--img_size"),
        ("gan", ["--ngf", "8"], "--ngf"),
        ("diffusion", ["--prediction_type", "sample"], "--prediction_type"),
    ],
)
def test_checkpoint_of_another_architecture_names_the_option(
    root, tmp_path, capsys, netg, used, flag
):
    path = make_checkpoint(root, tmp_path, netg=netg)
    results = tmp_path / "results"
    # (the later of two equal flags wins)
    argv = [*_common(root, tmp_path, netg=netg), "--results_dir", str(results), *used]
    before = snapshot(tmp_path)
    code, err = cli(test_script.main, argv, capsys)
    line = one_error_line(err)
    assert code == 2 and str(path.parent / "latest_checkpoint.pth") in line
    assert f"was trained with {flag} " in line and f"pass {flag} " in line
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- data values
@pytest.mark.parametrize(
    "values,expect",
    [
        (lambda ct: ct.astype(np.float32) / 255.0, "scaled to"),
        (lambda ct: ct.astype(np.float32) * 8 - 1000, "HU values must be windowed"),
    ],
    ids=["float_0_1", "hu"],
)
def test_ct_values_that_are_not_the_uint8_window_are_refused(root, values, expect):
    path = root / "CT" / "p1_20.nii.gz"
    ct, affine, _ = load_nifti(path)
    save_nifti(path, values(ct), affine)
    ds = VertebraDataset(dataroot=root, phase="train", img_size=32, seed=0)
    with pytest.raises(ValueError, match=rf"CT/p1_20\.nii\.gz.*{expect}"):
        ds.get_sample("p1_20", ds.valid_slices("p1_20")[0])
    problems = [str(p) for p in check_dataset(root)]
    assert any(p.startswith("p1_20: CT values") and expect in p for p in problems), problems


def test_error_in_a_dataloader_worker_is_the_same_clear_message(root):
    path = root / "CT" / "p2_20.nii.gz"
    ct, affine, _ = load_nifti(path)
    save_nifti(path, ct.astype(np.float32) / 255.0, affine)  # refused when an item loads it
    messages = []
    for workers in (0, 2):
        with contextlib.redirect_stdout(io.StringIO()):
            opt = TrainOptions([*_common(root, root.parent), "--num_workers", str(workers)]).parse()
        loader = create_dataset(opt)
        set_epoch(loader, 1)
        with pytest.raises(ValueError) as exc:
            list(loader)
        messages.append(str(exc.value))
    assert messages[0] == messages[1] and messages[0].startswith(str(path))
    assert "scaled to [0, 1]" in messages[1] and "\n" not in messages[1]


def _shielded_child(ready) -> None:
    shield_from_stop_signals()
    ready.set()
    time.sleep(60)


def test_worker_ignores_stop_signals_of_others_but_ends_with_its_parent():
    """A scheduler's SIGTERM to the whole job must not kill the workers under the main
    process (which saves first); the parent's own terminate() still ends them."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    child = ctx.Process(target=_shielded_child, args=(ready,), daemon=True)
    child.start()
    assert ready.wait(30)
    for sig in ("-TERM", "-INT"):  # sent by another process (kill), as a scheduler would
        subprocess.run(["kill", sig, str(child.pid)], check=True)
    child.join(1.0)
    assert child.is_alive()
    child.terminate()
    child.join(30)
    assert child.exitcode == 0


def test_worker_traceback_text_becomes_the_original_message():
    text = (
        "Caught NiftiError in DataLoader worker process 1.\nOriginal Traceback (most recent "
        'call last):\n  File "x.py", line 3, in f\n    g()\nutil.nifti_io.NiftiError: '
        "cannot read NIfTI file /d/CT/a_20.nii.gz: bad\n"
    )
    assert worker_error_message(text) == "cannot read NIfTI file /d/CT/a_20.nii.gz: bad"
    assert worker_error_message("cannot read NIfTI file x") is None


# ----------------------------------------------------------------------------- options
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.sampled_from(
    [0.0, -0.1, 1.0, 1e-30]
)
OPTIONS = st.one_of(
    st.tuples(st.sampled_from(["--lr", "--beta1", "--lambda_L1", "--ema_decay"]), FLOATS),
    st.tuples(st.sampled_from(["--lr_D", "--max_cache_mb", "--lambda_GAN"]), FLOATS),
    st.tuples(st.sampled_from(["--batch_size", "--ngf", "--img_size"]), st.integers(-5, 70)),
    st.tuples(st.just("--name"), st.text(alphabet="a./_", min_size=1, max_size=8)),
    st.tuples(st.just("--epoch"), st.text(alphabet="lates0/.", min_size=1, max_size=7)),
)


@FUZZ
@given(option=OPTIONS)
def test_fuzzed_option_values_are_refused_by_name_before_anything_is_written(tmp_path, option):
    flag, value = option
    argv = [*_common(tmp_path / "data", tmp_path), flag, str(value)]
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            opt = TrainOptions(argv).parse()
    except SystemExit:  # argparse: a value its type refuses
        assert flag in err.getvalue()
    except ValueError as exc:
        assert flag in str(exc)
    else:
        got = getattr(opt, flag[2:])
        if isinstance(got, float):
            assert np.isfinite(got) and got >= 0
        if flag == "--name":
            assert inside(tmp_path / "ckpt" / got, tmp_path / "ckpt") != tmp_path / "ckpt"
    assert not (tmp_path / "ckpt").exists()  # parsing writes nothing


def test_negative_learning_rate_is_one_line_and_nothing_is_written(root, tmp_path, capsys):
    before = snapshot(tmp_path)
    code, err = cli(train_script.main, [*_common(root, tmp_path), "--lr", "-0.1"], capsys)
    assert code == 2 and one_error_line(err) == "error: --lr must be > 0, got -0.1"
    assert snapshot(tmp_path) == before and not (tmp_path / "ckpt").exists()


# ----------------------------------------------------------------------------- I/O faults
def _raise_erofs_under(folder: Path, real):
    def fake(*args, **kwargs):
        where = Path(kwargs.get("dir") or (args[2] if len(args) > 2 else args[0]))
        if folder.resolve() in [where.resolve(), *where.resolve().parents]:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(where))
        return real(*args, **kwargs)

    return fake


def test_read_only_checkpoint_folder_still_evaluates_and_is_not_written(
    root, tmp_path, capsys, monkeypatch
):
    run = make_checkpoint(root, tmp_path).parent
    monkeypatch.setattr(tempfile, "mkstemp", _raise_erofs_under(run, tempfile.mkstemp))
    monkeypatch.setattr(tempfile, "mkdtemp", _raise_erofs_under(run, tempfile.mkdtemp))
    before = snapshot(run)
    results = tmp_path / "results"
    argv = [*_common(root, tmp_path), "--results_dir", str(results)]
    code, err = cli(test_script.main, argv, capsys)
    assert code == 0, err
    assert snapshot(run) == before  # test.py writes nothing into the checkpoint folder
    out = results / "run" / "test_latest"
    assert {"metrics.csv", "summary.json", "index.html", "test_opt.json"} <= {
        p.name for p in out.iterdir()
    }
    # a read-only results folder: one line naming it, and the previous results are kept
    monkeypatch.setattr(tempfile, "mkdtemp", _raise_erofs_under(results, tempfile.mkdtemp))
    kept = snapshot(results)
    code, err = cli(test_script.main, argv, capsys)
    line = one_error_line(err)
    assert code == 2 and str(out) in line and "Read-only file system" in line
    assert snapshot(results) == kept


#: Runs a script with files limited to argv[1] bytes: writes beyond fail with EFBIG, as on a
#: full disk (set in the child itself: a ``preexec_fn`` may deadlock a threaded parent).
_LIMITED = (
    "import resource, runpy, signal, sys\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "n = int(sys.argv.pop(1))\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def _limited_run(script: str, argv: list[str], max_bytes: int) -> subprocess.CompletedProcess:
    """Run ``script`` with every file it writes limited to ``max_bytes``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", _LIMITED, str(max_bytes), str(ROOT / script), *argv],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def test_full_disk_while_writing_results_leaves_no_half_report(root, tmp_path):
    make_checkpoint(root, tmp_path)
    results = tmp_path / "results"
    before = snapshot(tmp_path, results)
    proc = _limited_run("test.py", [*_common(root, tmp_path), "--results_dir", str(results)], 3000)
    line = one_error_line(proc.stderr)
    out = results / "run" / "test_latest"
    assert proc.returncode == 2 and f"cannot write {out}/" in line and ".tmp" not in line, line
    assert "File too large" in line
    assert not any(results.rglob("*")) or not (results / "run" / "test_latest").exists()
    assert not [p for p in results.rglob(".*")]  # no staging folder left
    assert snapshot(tmp_path, results) == before


def test_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_no_temp(root, tmp_path):
    argv = [*_common(root, tmp_path), "--n_epochs", "1", "--n_epochs_decay", "0"]
    proc = _limited_run("train.py", argv, 200_000)
    line = one_error_line(proc.stderr)
    run = tmp_path / "ckpt" / "run"
    assert proc.returncode == 2 and f"cannot write {run / '1_checkpoint.pth'}" in line
    assert not list(run.rglob(".*.tmp")) and not (run / "run.lock").exists()
    assert not list(run.glob("*_checkpoint.pth"))


def test_staged_results_replace_the_previous_ones_only_on_success(tmp_path):
    with pytest.raises(RuntimeError), staged_dir(tmp_path / "new" / "run" / "res"):
        raise RuntimeError("the model did not load")
    assert not list(tmp_path.iterdir())  # not even the parent folders it made
    out = tmp_path / "res"
    with staged_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError), staged_dir(out) as tmp:
        (tmp / "a.txt").write_text("2")
        raise RuntimeError("evaluation failed")
    assert (out / "a.txt").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == [
        "res"
    ]


def test_output_errors_name_the_path(tmp_path):
    from util.io import write_text_atomic

    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(OutputError, match=f"cannot write {target / 'sub.txt'}"):
        write_text_atomic(target / "sub.txt", "y")  # its folder is a file
