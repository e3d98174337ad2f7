"""Sharded slice evaluation (test.py --shard i/N, --merge; evaluation/slice_shard.py) and the
per-vertebra batches and seeds that make it equal to one process (evaluation/slice_eval.py)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from conftest import write_vertebra_root

import test as test_script
from evaluation import slice_report
from evaluation.slice_eval import evaluate, vertebra_batches
from evaluation.slice_shard import WORK_DIR, merge_shards
from models import create_model
from models.pix2pix_model import Pix2PixModel
from options.test_options import TestOptions
from util.cli import run_main
from util.nifti_io import load_nifti

IDS = ("p1_20", "p2_21", "p3_22")
SPLITS = {"train": {}, "val": {}, "test": {"p1_20": 0, "p2_21": 0, "p3_22": 1}}
TIMING = ("wall_time_s", "seconds_per_slice")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_vertebra_root(tmp_path_factory.mktemp("slices"), SPLITS, size=64, depth=16)


def _argv(root: Path, tmp: Path, netg: str, *extra: str) -> list[str]:
    argv = ["--dataroot", str(root), "--checkpoints_dir", str(tmp / "ckpt"), "--name", "run"]
    argv += ["--netG_type", netg, "--img_size", "32", "--gpu_ids", "-1", "--num_workers", "0"]
    if netg == "diffusion":
        argv += ["--num_inference_steps", "2"]
    return [*argv, *extra]


def _checkpoint(root: Path, tmp: Path, netg: str) -> list[str]:
    """An untrained model's ``latest`` checkpoint; returns the flags that load it."""
    argv = _argv(root, tmp, netg)
    with contextlib.redirect_stdout(io.StringIO()):
        torch.manual_seed(0)
        create_model(TestOptions(argv).parse(save=False)).save_networks("latest")
    return argv


def _test(argv: list[str], results: Path, *extra: str) -> Path:
    assert test_script.main([*argv, "--results_dir", str(results), *extra]) == 0
    return results / "run" / "test_latest"


def _summary(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k not in TIMING}


def _rows(result) -> str:
    return json.dumps(result.rows)  # every digit of every float; nan == nan


def _volumes(out: Path) -> dict[str, bytes]:
    """Decoded volumes of ``out/volumes`` (CT/, label/) by relative path."""
    files = sorted((out / "volumes").glob("*/*.nii.gz"))
    return {str(p.relative_to(out)): load_nifti(p)[0].tobytes() for p in files}


def _images(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "images").glob("*.png"))}


@pytest.mark.parametrize(
    "netg, flags, shards",
    [
        ("gan", ["--batch_size", "5", "--save_volumes"], [["p1_20", "p3_22"], ["p2_21"]]),
        # --num_test 4 batches of <= 4 slices: p1_20 (3 batches) and the first of p2_21
        ("diffusion", ["--batch_size", "4", "--num_test", "4"], [["p1_20"], ["p2_21"]]),
    ],
)
def test_two_shards_and_merge_equal_one_process(root, tmp_path, netg, flags, shards):
    argv = _checkpoint(root, tmp_path, netg) + flags
    one = _test(argv, tmp_path / "one")
    two_root = tmp_path / "two"
    for i in range(2):
        two = _test(argv, two_root, "--shard", f"{i}/2")
        assert not (two / "metrics.csv").exists()  # a shard writes only its records
    reports = [json.loads((two / f"slice_shard_{i}of2.json").read_text()) for i in range(2)]
    assert [r["vertebrae"] for r in reports] == shards
    assert _test(argv, two_root, "--merge") == two
    assert (two / "metrics.csv").read_text() == (one / "metrics.csv").read_text()
    assert _summary(two) == _summary(one)
    assert _images(two) == _images(one) and _images(one)
    assert _volumes(two) == _volumes(one) and len(_volumes(one)) == (6 if netg == "gan" else 0)
    summary = _summary(one)
    assert summary["n_vertebrae"] == sum(map(len, shards))
    assert summary["steps"] == (2 if netg == "diffusion" else None)
    # every digit: the merged rows are those one process computes
    opt = TestOptions([*argv, "--results_dir", str(tmp_path / "x")]).parse()
    model, dataset = slice_report._load(opt)
    direct = evaluate(
        model, dataset, batch_size=opt.batch_size, max_batches=opt.num_test, seed=opt.seed,
        extra_columns=lambda: {"netG_type": netg},
    )  # fmt: skip
    assert _rows(merge_shards(two)[0]) == _rows(direct)
    assert "const_rhdr" in direct.rows[0]  # recomputed over all rows by the merge


def test_diffusion_rows_depend_on_the_seed(root, tmp_path):
    """The test above can fail: a vertebra's diffusion rows change with its noise."""
    opt = TestOptions(_checkpoint(root, tmp_path, "diffusion") + ["--batch_size", "4"]).parse()
    model, dataset = slice_report._load(opt)
    a = evaluate(model, dataset, batch_size=4, max_batches=1, seed=0)
    b = evaluate(model, dataset, batch_size=4, max_batches=1, seed=1)
    assert [r["ssim_patch"] for r in a.rows] != [r["ssim_patch"] for r in b.rows]


def test_gan_rows_do_not_depend_on_the_batch_size(root, tmp_path):
    """Up to float32 rounding: batched convolutions may sum in another order (about 1e-8 of
    band SSIM here). Shards are exact because a vertebra's batches are the same in any."""
    opt = TestOptions(_checkpoint(root, tmp_path, "gan")).parse()
    model, dataset = slice_report._load(opt)
    state = torch.get_rng_state()
    rows = [evaluate(model, dataset, batch_size=b, seed=0).rows for b in (1, 3, 16)]
    assert len(rows[0]) == len(rows[2]) > 20
    for other in rows[1:]:
        for a, b in zip(rows[0], other, strict=True):
            assert list(a) == list(b)
            for k, v in a.items():
                if isinstance(v, float):
                    assert v == pytest.approx(b[k], rel=1e-5, abs=1e-6, nan_ok=True), k
                else:
                    assert v == b[k], k
    # evaluation leaves torch's global RNG alone (training validation must not move it)
    assert torch.equal(torch.get_rng_state(), state)


def test_vertebra_batches_never_mix_vertebrae_and_cut_after_max_batches():
    items = [("a", k, False) for k in range(5)] + [("b", k, False) for k in range(3)]
    assert vertebra_batches(items, 2) == {"a": [[0, 1], [2, 3], [4]], "b": [[5, 6], [7]]}
    assert vertebra_batches(items, 2, max_batches=4) == {"a": [[0, 1], [2, 3], [4]], "b": [[5, 6]]}
    assert vertebra_batches(items, 8, max_batches=1) == {"a": [[0, 1, 2, 3, 4]]}


def test_killed_shard_resumes_without_redoing_finished_vertebrae(
    root, tmp_path, monkeypatch, capsys
):
    argv = _checkpoint(root, tmp_path, "gan") + ["--batch_size", "16"]
    results = tmp_path / "results"
    infer = Pix2PixModel.infer
    calls: list[str] = []

    def counting(self, batch, **kw):
        calls.append(batch["id"][0])
        if killed and batch["id"][0] == "p3_22":
            raise KeyboardInterrupt  # the job is killed while evaluating its second vertebra
        return infer(self, batch, **kw)

    monkeypatch.setattr(Pix2PixModel, "infer", counting)
    killed = True
    with pytest.raises(KeyboardInterrupt):
        _test(argv, results, "--shard", "0/2")  # shard 0 of 2: p1_20 and p3_22
    out = results / "run" / "test_latest"
    work = out / WORK_DIR
    assert calls == ["p1_20", "p3_22"] and sorted(p.name for p in work.glob("*.json")) == [
        "p1_20.json"
    ]
    stamp = (work / "p1_20.json").stat().st_mtime_ns
    killed, calls[:] = False, []
    _test(argv, results, "--shard", "0/2")
    assert calls == ["p3_22"]  # p1_20 is not evaluated again
    assert (work / "p1_20.json").stat().st_mtime_ns == stamp
    assert "1 evaluated now, 1 already done" in capsys.readouterr().out
    # other settings are another run: nothing is skipped
    calls[:] = []
    _test(argv, results, "--shard", "0/2", "--seed", "1")
    assert calls == ["p1_20", "p3_22"]

    # the merge needs every shard: one line naming the missing one, nothing written
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_main(lambda: _test(argv, results, "--merge"))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "slice_shard_1of2.json" in err
    assert not (out / "metrics.csv").exists()
    # shards of different runs (seed 1 vs 0) are refused by the merge
    _test(argv, results, "--shard", "1/2")
    with pytest.raises(ValueError, match="different runs.*seed"):
        _test(argv, results, "--merge")
