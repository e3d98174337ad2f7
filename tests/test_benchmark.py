"""benchmarks/ and scripts/benchmark.py: a --quick run writes the full JSON schema with
consistent numbers.

No timing is asserted (speed targets live in the benchmark and docs/BENCHMARKS.md): only the
schema, the model sizes against the networks themselves, the whole-vertebra slice count, and
the arithmetic between measured and extrapolated figures.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from benchmarks.config import QUICK, make_config, parse_sections
from benchmarks.inputs import synthetic_batch
from benchmarks.report import md_table
from benchmarks.timing import cpu_model, measure, scaled, summarize
from models.diffusion_generator import DiffusionGenerator, crop_rows_for
from models.gan_generator import GanGenerator
from util.geometry import band_px, band_rows

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_KEYS = {"A", "B", "mask", "vert_mask", "normal_vert", "CAM", "height", "x1", "x2", "h2",
               "slice_ratio", "slice_index", "grade", "id"}  # fmt: skip


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, str]:
    """One ``--quick`` run of the script as a user runs it (own process, 1 thread)."""
    out = tmp_path_factory.mktemp("bench") / "sub" / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.benchmark", "--quick", "--threads", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _positive_times(stats: dict) -> None:
    assert 0 < stats["min_ms"] <= stats["median_ms"] < math.inf


def test_quick_run_top_level_and_machine(quick):
    res, stdout = quick
    assert res["complete"] is True and res["quick"] is True and res["schema_version"] == 1
    assert res["config"]["img_size"] == QUICK.img_size == 64
    assert res["busy_at_start"] == (res["loadavg_start"][0] >= 1.0)
    m = res["machine"]
    assert m["threads"] == 1 and m["torch_version"] == torch.__version__ and m["cpu_model"]
    assert m["device"] == "cpu"
    assert {"autocast_supported", "avx512_bf16", "amx", "fast"} <= set(m["bf16"])
    assert all(isinstance(v, bool) for v in m["bf16"].values())
    assert m["bf16"]["fast"] == (
        m["bf16"]["autocast_supported"] and (m["bf16"]["avx512_bf16"] or m["bf16"]["amx"])
    )
    for key in ("loadavg_start", "loadavg_end"):
        assert len(res[key]) == 3 and all(v >= 0 for v in res[key])
    for section in ("dataset", "gan", "diffusion"):
        assert f"### {section}" in stdout
        load = res[section]["loadavg"]
        assert len(load["start"]) == len(load["end"]) == 3
        assert res[section]["peak_rss_mb_so_far"] > 0 and res[section]["wall_s"] > 0


def test_quick_dataset_section(quick):
    d = quick[0]["dataset"]
    assert d["img_size"] == 64 and d["workers"] == 2 and d["batch"] == 4
    assert d["vertebrae"] >= 1 and d["phantom_generation_s"] > 0
    # the data set is repeated to reach warm_items items per epoch
    reps = math.ceil(QUICK.warm_items / d["vertebrae"])
    assert d["warm"]["items_per_epoch"] == reps * d["vertebrae"]
    for kind in ("cold", "warm"):
        r = d[kind]
        assert r["n"] == QUICK.repeats
        assert 0 < r["samples_per_s_median"] <= r["samples_per_s_max"] < math.inf


def test_quick_gan_section_sizes_match_the_network(quick):
    g = quick[0]["gan"]
    n = sum(p.numel() for p in GanGenerator(img_size=64).parameters())
    assert g["params"] == n and g["params_M"] == pytest.approx(n / 1e6)
    assert g["size_mb_fp32"] == pytest.approx(n * 4 / 2**20)
    precisions = [f["precision"] for f in g["forward"]]
    assert precisions[0] == "fp32" and set(precisions) <= {"fp32", "bf16"}
    assert [s["precision"] for s in g["train_step"]] == precisions
    for f in g["forward"]:
        assert f["batch"] == 1 and f["n"] == QUICK.cheap_repeats
        _positive_times(f)
    for s in g["train_step"]:
        assert s["batch"] == 4 and s["n"] == QUICK.repeats
        _positive_times(s)


def test_quick_diffusion_section_schema_and_arithmetic(quick):
    d = quick[0]["diffusion"]
    n = sum(p.numel() for p in DiffusionGenerator(img_size=64).parameters())
    # the denoiser U-Net's documented 4.15 M plus the segmenter's 1.05 M
    assert d["params"] == n and 5.15e6 < n < 5.25e6
    assert d["crop_at_256"] == 96 and d["crop_rows"] == crop_rows_for(64, 96) == 24
    _positive_times(d["unet_call_full_slice_fp32"])
    precisions = [s["precision"] for s in d["train_step"]]
    want = {(b, p, s) for b in QUICK.sample_batches for p in precisions for s in QUICK.sample_steps}
    got = [(e["batch"], e["precision"], e["steps"]) for e in d["sampling"]]
    assert len(got) == len(want) and set(got) == want
    for e in d["sampling"]:
        b, per_slice, per_call = e["batch"], e["ms_per_slice"], e["ms_per_call"]
        assert e["method"] in {"measured", "extrapolated"}
        for k in ("median_ms", "min_ms"):
            assert per_slice[k] == pytest.approx(per_call[k] / b)
            if e["method"] == "extrapolated":
                assert per_call[k] == pytest.approx(e["per_step_ms"][k] * e["steps"])
        _positive_times(per_slice)
    v = d["vertebra"]
    # central 4/5 of the 16 slices of a 64 px phantom volume: 12 slices, one batch
    # with the generator's default steps; the target is the original GAN pipeline's ~28 s
    steps = DiffusionGenerator(img_size=64).default_steps
    assert (v["slices"], v["batch"], v["calls"], v["steps"]) == (12, 12, 1, steps)
    assert v["seconds"] > 0 and v["meets_target"] == (v["seconds"] < 130 * 0.217)
    assert set(v["estimated_seconds"]) == set(precisions)
    # our GAN at the original's 130 batch-1 calls per vertebra
    gan_fwd = {f["precision"]: f["median_ms"] for f in quick[0]["gan"]["forward"]}
    assert v["gan_pipeline_s_ours"] == pytest.approx({p: ms * 0.13 for p, ms in gan_fwd.items()})


def test_summarize_scaled_and_measure():
    s = summarize([3.0, 1.0, 2.0, 10.0])
    assert (s["median_ms"], s["min_ms"], s["n"]) == (2.5, 1.0, 4)
    assert scaled(s, 0.5) == {"median_ms": 1.25, "min_ms": 0.5}
    with pytest.raises(ValueError):
        summarize([])
    calls = []
    r = measure(lambda: calls.append(1), repeats=3, warmup=2, device=torch.device("cpu"))
    assert len(calls) == 5 and r["n"] == 3 and r["min_ms"] >= 0


def test_cpu_model_and_sections_parsing(run_script, capsys):
    text = "processor\t: 0\nvendor_id\t: X\nmodel name\t: Fancy CPU 9000 @ 3GHz\nflags\t: a\n"
    assert cpu_model(text) == "Fancy CPU 9000 @ 3GHz"
    assert cpu_model("processor : 0\n")  # falls back to platform, never empty
    assert parse_sections("diffusion, gan") == ["gan", "diffusion"]
    for bad in ("gan,foo", "", ","):
        with pytest.raises(ValueError, match="--only"):
            parse_sections(bad)
    assert run_script("benchmark", ["--only", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: --only 'nope'")
    assert run_script("benchmark", ["--quick", "--dataroot", "/nonexistent/root"]) == 2
    assert "--dataroot not found" in capsys.readouterr().err
    assert make_config(quick=True, repeats=2) == replace(QUICK, repeats=2)
    with pytest.raises(ValueError, match="--repeats"):
        make_config(repeats=0)


def test_synthetic_batch_follows_the_sample_contract():
    s, b = 64, 3
    batch = synthetic_batch(b, s, seed=5)
    assert set(batch) == SAMPLE_KEYS
    h2 = band_px(s)
    r0, r1 = band_rows(s)
    rows = batch["mask"][:, 0, :, 0]
    assert torch.equal(rows[:, r0:r1], torch.ones(b, r1 - r0)) and rows.sum() == b * h2
    for key in ("A", "B", "mask", "vert_mask", "normal_vert", "CAM"):
        assert batch[key].shape == (b, 1, s, s) and batch[key].dtype == torch.float32
    assert batch["B"].abs().max() <= 1 and batch["A"][batch["mask"] > 0].abs().max() == 0
    h = batch["height"]
    assert torch.all(h < h2) and torch.equal(batch["x2"] - batch["x1"] + 1, h.long())
    # the vertebra occupies rows [S//2 - h//2, S//2 - h//2 + h) (B geometry)
    vert_rows = batch["vert_mask"][:, 0].amax(dim=2)
    assert torch.equal(vert_rows.sum(1), h)
    assert torch.equal(vert_rows.argmax(1), s // 2 - h.long() // 2)


def test_md_table():
    table = md_table(["a", "b"], [[1.23456, 123.456], [None, "x"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1.23 | 123.5 |", "| - | x |"]
