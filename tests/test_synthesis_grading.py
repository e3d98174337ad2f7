"""evaluation/synthesis.py with scripts/synthesize_volume.py (whole-vertebra synthesis,
iterative context), evaluation/synthesis_grading.py (RHLV grading with vs without synthesis)
and evaluation/grading_ceiling.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data.phantom import generate_dataset
from data.vertebra_dataset import VertebraDataset
from evaluation import grading_ceiling as GC
from evaluation import synthesis as SY
from evaluation import synthesis_grading as GS
from evaluation import synthesis_shard as SS
from evaluation.grading import grade, load_heights_table
from models import create_model
from options.test_options import TestOptions
from util.nifti_io import ipl_affine, load_nifti, save_nifti

IDS = ("phantom000_20", "phantom000_21", "phantom000_22")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """One 64 px phantom patient (seed 0, the simple morphometry that this layout was chosen
    on): 21 is grade 2, 22 grade 1, the others normal."""
    root = tmp_path_factory.mktemp("phantom")
    generate_dataset(
        root,
        1,
        img_size=64,
        seed=0,
        workers=1,
        progress=False,
        overwrite=True,
        morphometry="simple",
    )
    grades = json.loads((root / "vertebra_data.json").read_text())["train"]
    assert (grades["phantom000_21"], grades["phantom000_22"], grades["phantom000_20"]) == (2, 1, 0)
    return root


def _label(root: Path, key: str) -> np.ndarray:
    return load_nifti(root / "label" / f"{key}.nii.gz")[0]


# ----------------------------------------------------------------------------- ordering
def test_iterative_order_puts_fractured_first_per_patient():
    keys = ["a_19", "a_20", "a_21", "b_1_20", "b_1_21", "a_22"]
    grades = {"a_19": 0, "a_20": 2, "a_21": -1, "b_1_20": 0, "b_1_21": 3, "a_22": 1}
    assert SY.iterative_order(keys, grades) == [
        "a_20",
        "a_22",
        "a_19",
        "a_21",
        "b_1_21",
        "b_1_20",
    ]


# ----------------------------------------------------------------------------- context
def test_row_offset_maps_one_volume_onto_the_other_exactly(phantom):
    lv, lu = _label(phantom, "phantom000_20"), _label(phantom, "phantom000_21")
    o, agreement = SY.estimate_row_offset(lv, lu)
    assert agreement == 1.0
    # 21 lies below 20 in the spine: row r of 20's volume is row r + o of 21's, o < 0.
    assert o < 0
    n = lv.shape[0]
    np.testing.assert_array_equal(lv[-o:], lu[: n + o])
    # any other offset disagrees
    assert SY.label_agreement(lv, lu, o + 1) < 0.9 and SY.label_agreement(lv, lu, o - 1) < 0.9
    # a volume that is no crop of the same spine (flipped) has a low agreement
    assert SY.estimate_row_offset(lv, lu[::-1].copy())[1] < SY.MIN_LABEL_AGREEMENT


def test_replace_context_copies_neighbour_rows_only(phantom):
    ct_v = load_nifti(phantom / "CT" / "phantom000_20.nii.gz")[0]
    ct_u = load_nifti(phantom / "CT" / "phantom000_21.nii.gz")[0]
    lv, lu = _label(phantom, "phantom000_20"), _label(phantom, "phantom000_21")
    o, _ = SY.estimate_row_offset(lv, lu)
    marker = (255 - ct_u).astype(np.uint8)  # the "synthesised" neighbour: an inverted CT
    slices = [6, 7, 8]
    ct, label = SY.replace_context(
        ct_v, lv, 20, syn_ct_u=marker, syn_label_u=lu, label_u=lu, uid=21, offset=o, slices=slices
    )
    others = [k for k in range(ct_v.shape[2]) if k not in slices]
    np.testing.assert_array_equal(ct[:, :, others], ct_v[:, :, others])
    np.testing.assert_array_equal(label, lv)  # syn label == original label: nothing moves
    for k in slices:
        rows_u = (lv[:, :, k] == 21).any(axis=1)
        rows_v = (lv[:, :, k] == 20).any(axis=1)
        assert rows_u.any()
        changed = rows_u & ~rows_v
        r = np.flatnonzero(changed)
        np.testing.assert_array_equal(ct[r, :, k], marker[r + o, :, k])
        keep = ~(rows_u | (lu[np.clip(np.arange(64) + o, 0, 63), :, k] == 21).any(axis=1))
        keep |= rows_v
        np.testing.assert_array_equal(ct[keep, :, k], ct_v[keep, :, k])


def test_slice_samples_from_unchanged_volumes_equal_the_dataset(phantom):
    ds = VertebraDataset(dataroot=phantom, phase="train", img_size=64, seed=0, vert_class="all")
    key = "phantom000_20"
    ct = load_nifti(phantom / "CT" / f"{key}.nii.gz")[0]
    plain = SY.slice_samples(ds, key)
    rebuilt = SY.slice_samples(ds, key, ct=ct, label=_label(phantom, key))
    assert [int(s["slice_index"]) for s in plain] == ds.valid_slices(key)
    for a, b in zip(plain, rebuilt, strict=True):
        for name in ("A", "B", "vert_mask", "normal_vert", "CAM", "height", "x1", "x2"):
            assert torch.equal(a[name], b[name]), name


# ----------------------------------------------------------------------------- synthesis
def _untrained_checkpoint(root: Path, ckpt: Path) -> list[str]:
    argv = [
        "--dataroot",
        str(root),
        "--name",
        "untrained",
        "--checkpoints_dir",
        str(ckpt),
        "--img_size",
        "64",
        "--gpu_ids",
        "-1",
        "--batch_size",
        "16",
        "--netG_type",
        "gan",
    ]
    torch.manual_seed(0)
    model = create_model(TestOptions(argv).parse(save=False))
    model.save_networks("latest")
    return argv


def test_synthesize_volume_cli_iterative(phantom, tmp_path, run_script):
    argv = _untrained_checkpoint(phantom, tmp_path / "ckpt")
    out = tmp_path / "syn"
    args = ["--phase", "train", "--ids", ",".join(IDS), "--iterative", "--out", str(out)]
    assert run_script("synthesize_volume", argv + args) == 0
    index = json.loads((out / SY.INDEX_FILE).read_text())
    # fractured first (21 grade 2, 22 grade 1), then the normal 20
    assert index["order"] == ["phantom000_21", "phantom000_22", "phantom000_20"]
    ctx = {k: [c["id"] for c in v["context"]] for k, v in index["vertebrae"].items()}
    assert ctx == {
        "phantom000_21": [],
        "phantom000_22": ["phantom000_21"],
        "phantom000_20": ["phantom000_21", "phantom000_22"],
    }
    assert all(c["agreement"] == 1.0 for v in index["vertebrae"].values() for c in v["context"])
    assert index["num_inference_steps"] is None and index["netG_type"] == "gan"  # one pass
    ds = VertebraDataset(dataroot=phantom, phase="train", img_size=64, seed=0, vert_class="all")
    for key in IDS:
        entry = index["vertebrae"][key]
        assert entry["slices"] == ds.valid_slices(key)
        vid = int(key.rpartition("_")[2])
        for folder in ("CT", "label"):
            src, aff, _ = load_nifti(phantom / folder / f"{key}.nii.gz")
            syn, syn_aff, _ = load_nifti(out / folder / f"{key}.nii.gz")
            assert syn.shape == src.shape and syn.dtype == src.dtype
            np.testing.assert_allclose(syn_aff, aff)
            untouched = [k for k in range(src.shape[2]) if k not in entry["slices"]]
            np.testing.assert_array_equal(syn[:, :, untouched], src[:, :, untouched])
            if folder == "CT":  # every synthesised slice was rewritten by the model
                assert all(not np.array_equal(syn[:, :, k], src[:, :, k]) for k in entry["slices"])
            else:  # neighbour labels are the input's unless the restored target covers them
                other = (src != vid) & (src != 0)
                assert ((syn[other] == src[other]) | (syn[other] == vid)).all()
                assert set(np.unique(syn)) <= set(np.unique(src)) | {vid}


# ----------------------------------------------------------------------------- grading
SIZE, DEPTH, SPACING = 64, 16, 4.0
#: Healthy height 9 rows; original height per grade (RHLV 0, 2/9, 4/9, 6/9).
ORI_ROWS = {0: 9, 1: 7, 2: 5, 3: 3}
#: Neighbour heights (rows) cycle independently of the grade: the baseline is confounded.
NB_ROWS = (6, 12, 9, 11, 7)


def _volume(rows: dict[int, tuple[int, int]]) -> np.ndarray:
    label = np.zeros((SIZE, SIZE, DEPTH), np.uint8)
    for vid, (r0, r1) in rows.items():
        label[r0:r1, 16:48, 2 : DEPTH - 2] = vid
    return label


def _grading_root(root: Path) -> tuple[Path, Path]:
    """Data root + synthesis folder: 5 vertebrae (id 20) per grade; original height by grade,
    synthesised (and healthy) height 9 rows, neighbours 19 and 21 of varying heights."""
    syn = root / "syn"
    aff = ipl_affine(SPACING)
    splits: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    truth = {}
    for g, h in ORI_ROWS.items():
        for i in range(5):
            key = f"g{g}n{i}_20"
            nb = NB_ROWS[(i + g) % len(NB_ROWS)]
            c = 32  # the target's rows are centred on row 32, neighbours 3 rows away
            target = (c - h // 2, c - h // 2 + h)
            healthy = (c - 4, c + 5)
            rows = {
                19: (healthy[0] - 3 - nb, healthy[0] - 3),
                21: (healthy[1] + 3, healthy[1] + 3 + nb),
            }
            save_nifti(root / "label" / f"{key}.nii.gz", _volume({**rows, 20: target}), aff)
            save_nifti(syn / "label" / f"{key}.nii.gz", _volume({**rows, 20: healthy}), aff)
            if g > 0:
                path = root / "healthy_label" / f"{key}.nii.gz"
                save_nifti(path, _volume({**rows, 20: healthy}), aff)
            splits["val" if i % 2 else "test"][key] = g
            mm = {f"{t}_mm": h * SPACING for t in GS.THIRDS}
            truth[key] = {"healthy": {k: 9 * SPACING for k in mm}, "fractured": mm}
    (root / "vertebra_data.json").write_text(json.dumps(splits))
    (root / "heights.json").write_text(json.dumps(truth))
    return root, syn


def test_neighbour_ids_follow_the_spine_order():
    assert GS.neighbour_ids([19, 20, 21, 26], 20) == [19, 21]
    assert GS.neighbour_ids([23, 24, 26], 24) == [23]  # the sacrum is no neighbour
    assert GS.neighbour_ids([19, 28, 20, 21], 20) == [28, 21]  # T13 between T12 and L1
    assert GS.neighbour_ids([28, 20], 28) == [20]
    with pytest.raises(ValueError, match="26"):
        GS.neighbour_ids([25], 26)


def test_grade_synthesis_known_answer(tmp_path, capsys, run_script):
    root, syn = _grading_root(tmp_path / "root")
    out = tmp_path / "grading"
    argv = ["--dataroot", root, "--synthesis", syn, "--out", out]
    assert run_script("grade_synthesis", argv) == 0
    table = json.loads((out / GS.TABLE_FILE).read_text())
    assert len(table) == 20
    rec = table["g2n1_20"]  # grade 2: 5 rows; neighbours NB_ROWS[3] = 11 rows
    assert rec["original"]["anterior_mm"] == 5 * SPACING
    assert rec["synthesised"]["middle_mm"] == 9 * SPACING
    assert rec["neighbours"]["posterior_mm"] == 11 * SPACING
    assert rec["neighbour_ids"] == [19, 21]
    assert rec["healthy_measured"]["anterior_mm"] == 9 * SPACING
    # the table loads with evaluation.grading's reader
    loaded = load_heights_table(out / GS.TABLE_FILE)
    assert loaded.neighbours is not None and loaded.original.shape == (20, 3)

    result = json.loads((out / GS.GRADING_FILE).read_text())
    assert result["n"] == 20
    assert result["grades"] == {"0": 5, "1": 5, "2": 5, "3": 5}
    # synthesised heights = healthy heights: RHLV separates the grades perfectly
    for key in ("rhlv", "oracle_measured", "oracle_true"):
        assert result[key]["macro_f1"] == pytest.approx(1.0), key
        assert result[key]["folds"] == 5
    # the baseline, against neighbours whose heights do not follow the grade, does not; its
    # result is evaluation.grading's on the hand-built features 1 - H_ori / H_nb
    base = result["baseline"]
    assert base["macro_f1"] < 0.9
    ids = list(table)
    grades = [int(k[1]) for k in ids]
    ori = np.array([ORI_ROWS[g] for g in grades], float)
    nb = np.array([NB_ROWS[(int(k[3]) + int(k[1])) % len(NB_ROWS)] for k in ids], float)
    expected = grade(np.repeat((1 - ori / nb)[:, None], 3, axis=1), grades, 0)
    assert base["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert base["confusion_matrix"] == expected["confusion_matrix"]
    for name in ("confusion_matrix.png", "confusion_matrix_baseline.png"):
        assert (out / name).stat().st_size > 0
    # the Genant rule: the same classifier on 1 - H_third / H_posterior of the vertebra itself
    own = np.repeat(ori[:, None], 3, axis=1)
    expected = grade(1 - own / own[:, 2:3], grades, 0)
    assert result["genant_rule"]["confusion_matrix"] == expected["confusion_matrix"]
    # every row has a bootstrap interval around its estimate
    for key in ("rhlv", "baseline", "genant_rule", "oracle_true"):
        lo, hi = result[key]["ci95"]["f1"]
        assert lo <= result[key]["macro_f1"] <= hi, key
        assert result[key]["truth"] == grades
    assert result["baseline"]["ci95"]["f1"][0] < result["baseline"]["ci95"]["f1"][1]
    printed = capsys.readouterr().out
    assert "rhlv" in printed and "baseline" in printed and "genant_rule" in printed
    assert "95 % CI" in printed


def test_grade_synthesis_failures_count_against_the_synthesis(tmp_path):
    root, syn = _grading_root(tmp_path / "root")
    # a grade-3 vertebra without synthesis: RHLV 0, graded but charged to the synthesis
    (syn / "label" / "g3n0_20.nii.gz").unlink()
    # a vertebra whose original body touches the volume's edge: out of every classifier
    label = np.zeros((SIZE, SIZE, DEPTH), np.uint8)
    label[0:9, 16:48, 2:14] = 20
    label[12:24, 16:48, 2:14] = 21
    save_nifti(root / "label" / "g0n0_20.nii.gz", label, ipl_affine(SPACING))
    with pytest.warns(UserWarning):
        result = GS.grade_synthesis(root, syn, tmp_path / "out")
    assert set(result["skipped"]) == {"g0n0_20"} and "original" in result["skipped"]["g0n0_20"]
    assert set(result["synthesis_failed"]) == {"g3n0_20"}
    assert result["n"] == result["rhlv"]["n"] == result["baseline"]["n"] == 19
    table = json.loads((tmp_path / "out" / GS.TABLE_FILE).read_text())
    assert "g0n0_20" not in table
    assert table["g3n0_20"]["synthesised"] == table["g3n0_20"]["original"]
    assert result["rhlv"]["macro_f1"] < 1.0  # the missed fracture costs the RHLV classifier
    # no synthesised label of the phase at all: a usage error, not 19 failures
    (tmp_path / "empty" / "label").mkdir(parents=True)
    with (
        pytest.warns(UserWarning, match="left out of the grading"),
        pytest.raises(FileNotFoundError, match="no synthesised label"),
    ):
        GS.grade_synthesis(root, tmp_path / "empty", tmp_path / "out2")


def test_phase_without_vertebrae_is_an_error(phantom, tmp_path, run_script, capsys):
    argv = _untrained_checkpoint(phantom, tmp_path / "ckpt")
    capsys.readouterr()
    # 1 patient: all in train
    assert run_script("synthesize_volume", argv + ["--phase", "all_eval"]) == 2
    assert "no vertebra in the split" in capsys.readouterr().err
    opt = TestOptions(argv + ["--phase", "train"]).parse(save=False)
    with pytest.raises(ValueError, match="no vertebra in the split"):
        SY.datasets_for(opt, "all_eval")
    assert [d.phase for d in SY.datasets_for(opt, "all")] == ["train"]  # empty splits left out


def _ceiling_root(root, n_patients: int = 40):
    """heights.json + vertebra_data.json: T12-L3 (19-22) per patient, healthy thirds 25 mm x
    a per-vertebra factor in [0.97, 1.03]; one fracture in 2 of 3 patients (grade cycles 1-3,
    loss 22 / 32 / 45 % on all thirds), at L1 (20) or L2 (21), so some normals have a
    fractured neighbour."""
    rng = np.random.default_rng(0)
    truth, test = {}, {}
    for p in range(n_patients):
        g, fractured = 1 + p % 3, (20, 21)[p % 2] if p % 3 else None
        for vid in (19, 20, 21, 22):
            h = 25.0 * (1 + rng.uniform(-0.03, 0.03))
            grade_ = g if vid == fractured else 0
            loss = {0: 0.0, 1: 0.22, 2: 0.32, 3: 0.45}[grade_]
            key = f"p{p:02d}_{vid}"
            truth[key] = {
                "grade": grade_,
                "healthy": {f"{t}_mm": h for t in ("anterior", "middle", "posterior")},
                "fractured": {
                    f"{t}_mm": h * (1 - loss) for t in ("anterior", "middle", "posterior")
                },
            }
            test[key] = grade_
    (root / "heights.json").write_text(json.dumps(truth), encoding="utf-8")
    (root / "vertebra_data.json").write_text(json.dumps({"test": test}), encoding="utf-8")
    return root


def test_grading_ceiling_rows(tmp_path, capsys, run_script):
    root = _ceiling_root(tmp_path)
    out = tmp_path / "ceiling.json"
    argv = f"--dataroot {root} --phase test --noise 0 30 --repeats 2 --out {out}".split()
    assert run_script("grading_ceiling", argv) == 0
    assert "perfect synthesis" in capsys.readouterr().out
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"]
    perfect, nb, nb_h = (
        rows["perfect synthesis"],
        rows["neighbour ratio"],
        rows["neighbour ratio, healthy neighbours"],
    )
    assert perfect["macro_f1"] == 1.0 and perfect["height_error_pct"] == 0.0
    assert rows["synthesis with 0 % error"]["macro_f1"] == 1.0  # zero noise = perfect
    assert rows["synthesis with 30 % error"]["macro_f1"] < 0.8  # noise as large as the losses
    # fractured neighbours bias the plain neighbour mean; healthy neighbours remove that
    assert nb_h["height_error_pct"] < nb["height_error_pct"] <= 100
    assert 0 < nb_h["height_error_pct"] < 6  # two 3 % draws of the neighbours vs the target's
    # Every loss here lowers all thirds alike (a crush): the own-posterior ratio cannot see it.
    assert rows["own posterior height (Genant ratio)"]["macro_f1"] < 0.6
    assert perfect["ci95"]["f1"] == [1.0, 1.0]
    lo, hi = nb["ci95"]["f1"]
    assert lo <= nb["macro_f1"] <= hi


def test_bootstrap_ci_brackets_the_estimate():
    y = np.repeat([0, 1, 2, 3], 25)
    pred = np.where(np.arange(100) % 4 == 0, (y + 1) % 4, y)  # 75 % right in every grade
    ci = GC.bootstrap_ci(y, pred, n_boot=300, seed=1)
    assert ci["f1"][0] < 0.75 < ci["f1"][1] and ci["f1"][1] - ci["f1"][0] < 0.25


def test_grading_ceiling_needs_a_phantom_root(tmp_path):
    (tmp_path / "vertebra_data.json").write_text('{"test": {"p_20": 0}}', encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="heights.json"):
        GC.grading_ceiling(tmp_path, "test", [1.0])
    with pytest.raises(ValueError, match="--repeats must be >= 1"):
        GC.grading_ceiling(tmp_path, "test", [1.0], repeats=0)


def test_grade_synthesis_healthivert_protocol(tmp_path, capsys, run_script):
    """--protocol healthivert: the original's RHLV from the label volumes, its grading (folds
    over train + test, val scored) and its 3-D metrics of the normal val vertebrae."""
    root, syn = _grading_root(tmp_path / "root")
    splits: dict[str, dict[str, int]] = {"test": {}, "train": {}, "val": {}}
    for g in ORI_ROWS:
        for i in range(5):  # 3 train/test and 2 val vertebrae per grade
            splits[("train", "test", "train", "val", "val")[i]][f"g{g}n{i}_20"] = g
    (root / "vertebra_data.json").write_text(json.dumps(splits))
    for key in splits["val"]:  # CT volumes for the synthesis metrics
        for folder in (root, syn):
            ct = (load_nifti(folder / "label" / f"{key}.nii.gz")[0] > 0).astype(np.uint8) * 200
            save_nifti(folder / "CT" / f"{key}.nii.gz", ct + 20, ipl_affine(SPACING))
    out = tmp_path / "grading"
    argv = ["--dataroot", root, "--synthesis", syn, "--out", out]
    with pytest.warns(UserWarning, match="3 folds"):
        assert run_script("grade_synthesis", [*argv, "--protocol", "healthivert"]) == 0
    result = json.loads((out / GS.GRADING_FILE).read_text())
    assert result["protocol"] == "healthivert" and result["phase"] == "all"
    rhlv = result["rhlv"]
    assert (rhlv["n_train_test"], rhlv["n_val"], rhlv["folds"]) == (12, 8, 3)
    assert rhlv["macro_f1"] == pytest.approx(1.0)  # synthesised = healthy: grades separate
    per = result["rhlv_per_vertebra"]["g2n3_20"]  # 5 of 9 rows left
    assert per["anterior"] == per["middle"] == per["posterior"] == pytest.approx(4 / 9, abs=1e-6)
    metrics = result["synthesis_metrics"]  # grade-0 val: original 9 rows = synthesised
    assert metrics["n"] == 2 and metrics["dice"] == pytest.approx(1.0)
    assert "healthivert" in capsys.readouterr().out
    assert GS.grade_synthesis(root, syn, out)["protocol"] == "ours"


# ----------------------------------------------------------------------------- sharded synthesis
def _files(out: Path) -> dict[str, bytes]:
    """Decoded volumes of ``out`` (CT/, label/) by relative path."""
    return {
        str(p.relative_to(out)): load_nifti(p)[0].tobytes() for p in sorted(out.glob("*/*.nii.gz"))
    }


@pytest.mark.parametrize("iterative", [False, True])
def test_two_shards_and_merge_equal_one_process(phantom, tmp_path, run_script, iterative):
    argv = _untrained_checkpoint(phantom, tmp_path / "ckpt")
    args = ["--phase", "train", "--ids", ",".join(IDS)] + (["--iterative"] if iterative else [])
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_script("synthesize_volume", argv + args + ["--out", str(one)]) == 0
    for i in range(2):
        assert (
            run_script("synthesize_volume", argv + args + ["--out", str(two), "--shard", f"{i}/2"])
            == 0
        )
    parts = [json.loads((two / f"synthesis_shard_{i}of2.json").read_text()) for i in range(2)]
    sizes = sorted(len(p["vertebrae"]) for p in parts)
    assert sizes == ([0, 3] if iterative else [1, 2])  # iterative: by patient (one here)
    assert not (two / SY.INDEX_FILE).exists()
    assert run_script("synthesize_volume", ["--merge", "--out", str(two)]) == 0
    index_one = json.loads((one / SY.INDEX_FILE).read_text())
    index_two = json.loads((two / SY.INDEX_FILE).read_text())
    assert index_two == index_one
    assert list(index_two["vertebrae"]) == index_one["order"]
    assert _files(two) == _files(one) and len(_files(one)) == 6


def test_restarted_shard_skips_finished_vertebrae(phantom, tmp_path, run_script):
    argv = _untrained_checkpoint(phantom, tmp_path / "ckpt")
    out = tmp_path / "syn"
    args = argv + ["--phase", "train", "--ids", ",".join(IDS), "--out", str(out)]
    assert run_script("synthesize_volume", args + ["--shard", "0/2"]) == 0
    mine = json.loads((out / "synthesis_shard_0of2.json").read_text())["vertebrae"]
    kept, redo = sorted(mine)
    stamp = {k: (out / "CT" / f"{k}.nii.gz").stat().st_mtime_ns for k in mine}
    (out / "label" / f"{redo}.nii.gz").unlink()  # as if killed while writing it
    assert run_script("synthesize_volume", args + ["--shard", "0/2"]) == 0
    assert (out / "CT" / f"{kept}.nii.gz").stat().st_mtime_ns == stamp[kept]  # skipped
    assert (out / "CT" / f"{redo}.nii.gz").stat().st_mtime_ns != stamp[redo]  # redone
    assert (out / "label" / f"{redo}.nii.gz").is_file()
    again = json.loads((out / "synthesis_shard_0of2.json").read_text())["vertebrae"]
    assert again == mine
    # another seed is another run: nothing is skipped
    assert run_script("synthesize_volume", args + ["--shard", "0/2", "--seed", "1"]) == 0
    assert (out / "CT" / f"{kept}.nii.gz").stat().st_mtime_ns != stamp[kept]
    # the merge needs every shard
    with pytest.raises(FileNotFoundError, match="synthesis_shard_1of2.json"):
        SS.merge_synthesis(out)
