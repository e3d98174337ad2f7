"""scripts/compare_generators.py at a toy budget (64 px, 3 patients, one epoch each; at 32 px
some bands are too thin for SSIM), and train.py's --max_train_minutes."""

from __future__ import annotations

import json

import pytest

from data.phantom import generate_dataset
from evaluation.compare_generators import variants_for


@pytest.fixture(scope="module")
def phantom64(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom64")
    generate_dataset(root, 3, img_size=64, seed=0, workers=1, progress=False)
    return root


def test_toy_comparison_writes_table_json_and_curves(phantom64, tmp_path, run_script):
    out = tmp_path / "cmp"
    status = run_script(
        "compare_generators",
        ["--dataroot", str(phantom64), "--img_size", "64", "--minutes", "0.001",
         "--out", str(out), "--ablation", "stage1", "--batch_size", "4"],
    )  # fmt: skip
    assert status == 0
    data = json.loads((out / "compare.json").read_text())
    names = [r["name"] for r in data["rows"]]
    assert names == ["gan", "diffusion", "diffusion_stage1"]
    for r in data["rows"]:
        assert r["epochs"] == 1  # the budget stops each run after its first epoch
        for key in ("ssim_patch", "psnr_patch", "l1_patch", "dice", "rhdr", "hf_ratio"):
            assert key in r
        assert 0 <= r["fill_hf_ratio"] < 10
    table = (out / "compare.md").read_text()
    assert "fill baseline" in table and "diffusion_stage1" in table
    assert (out / "curves.png").stat().st_size > 0
    log = (out / "ckpt" / "diffusion" / "loss_log.txt").read_text()
    assert "reached --max_train_minutes" in log


def test_unknown_ablation_is_refused():
    with pytest.raises(ValueError, match="stage1"):
        variants_for(["no_such_thing"])
