"""evaluation/grading.py: RHLV features, cross-validated SVM grading, I/O; scripts/grade.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from evaluation import grading as G

SCHEMA = {
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "fold_macro_f1",
    "predictions",
    "truth",
    "per_class",
    "confusion_matrix",
    "labels",
    "n",
    "folds",
    "seed",
    "features",
    "classifier",
}


def _separable(n_per: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RHLV-like features: grade g has losses around 0.1 * g + 0.05, well apart."""
    rng = np.random.default_rng(seed)
    grades = np.repeat(np.arange(4), n_per)
    feats = 0.12 * grades[:, None] + rng.uniform(0, 0.02, size=(grades.size, 3))
    return feats, grades


def test_rhlv_and_baseline_features():
    ori = np.array([[15.0, 20.0, 30.0]])
    syn = np.array([[20.0, 20.0, 24.0]])
    np.testing.assert_allclose(G.rhlv_features(ori, syn), [[0.25, 0.0, -0.25]])
    np.testing.assert_allclose(G.baseline_features(ori, syn), [[0.25, 0.0, -0.25]])
    with pytest.raises(ValueError, match="synthesised"):
        G.rhlv_features(ori, np.array([[20.0, 0.0, 24.0]]))
    with pytest.raises(ValueError, match="shape"):
        G.baseline_features(ori, np.ones((1, 2)))


def test_separable_grades_give_f1_one():
    feats, grades = _separable()
    res = G.grade(feats, grades, seed=3)
    assert set(res) == SCHEMA
    assert res["truth"] == [int(g) for g in grades]  # in input order, beside "predictions"
    assert res["macro_f1"] == pytest.approx(1.0)
    assert res["macro_precision"] == pytest.approx(1.0)
    assert res["folds"] == 5 and res["n"] == 40
    cm = np.array(res["confusion_matrix"])
    np.testing.assert_array_equal(cm, np.diag([10, 10, 10, 10]))
    assert res["labels"] == [0, 1, 2, 3]
    assert sum(c["support"] for c in res["per_class"].values()) == 40
    assert len(res["fold_macro_f1"]) == 5


def test_uninformative_features_near_chance():
    rng = np.random.default_rng(0)
    grades = np.repeat([0, 1], 60)
    noise = rng.normal(size=(120, 3))  # same distribution for both grades
    res = G.grade(noise, grades, seed=0)
    assert res["macro_f1"] < 0.65
    const = G.grade(np.ones((120, 3)), grades, seed=0)  # identical features
    assert const["macro_f1"] <= 0.5 + 1e-9
    assert np.array(const["confusion_matrix"]).sum() == 120


def test_fold_fallback_and_errors():
    feats, grades = _separable(n_per=6)
    keep = np.concatenate([np.flatnonzero(grades != 3), np.flatnonzero(grades == 3)[:3]])
    with pytest.warns(UserWarning, match="3-fold"):
        res = G.grade(feats[keep], grades[keep], seed=0)
    assert res["folds"] == 3
    with pytest.raises(ValueError, match="single vertebra"):
        G.grade(feats[:7], grades[:7])  # grade 1 has one member
    with pytest.raises(ValueError, match="at least 2 grades"):
        G.grade(feats[:6], grades[:6])
    with pytest.raises(ValueError, match="match"):
        G.grade(feats, grades[:-1])


def _write_csv(path: Path, with_nb: bool = True) -> None:
    feats, grades = _separable(n_per=8, seed=1)
    syn = np.full((grades.size, 3), 27.0)
    ori = syn * (1 - feats)
    nb = syn + 0.5
    cols = ["id", "grade", "ori_a", "ori_m", "ori_p", "syn_a", "syn_m", "syn_p"]
    cols += ["nb_a", "nb_m", "nb_p"] if with_nb else []
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for i, g in enumerate(grades):
            row = [f"p{i}_20", int(g), *ori[i], *syn[i]] + (list(nb[i]) if with_nb else [])
            w.writerow(row)


def test_cli_csv_writes_json_and_png(tmp_path, run_script):
    heights = tmp_path / "heights.csv"
    _write_csv(heights)
    out = tmp_path / "grading"
    assert run_script("grade", ["--heights", heights, "--out", out, "--seed", "1"]) == 0
    data = json.loads((out / "grading.json").read_text())
    assert set(data) == {"rhlv", "baseline", "protocol", "protocol_note"}
    assert data["protocol"] == "ours"
    assert set(data["rhlv"]) == SCHEMA and set(data["baseline"]) == SCHEMA
    assert data["rhlv"]["macro_f1"] == pytest.approx(1.0)
    assert data["rhlv"]["features"] == ["rhlv_anterior", "rhlv_middle", "rhlv_posterior"]
    assert data["rhlv"]["seed"] == 1 and data["rhlv"]["n"] == 32
    for png in ("confusion_matrix.png", "confusion_matrix_baseline.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_input_and_missing_neighbours(tmp_path):
    feats, grades = _separable(n_per=5)
    entries = {}
    for i, g in enumerate(grades):
        syn = {"anterior_mm": 25.0, "middle_mm": 26.0, "posterior_mm": 27.0}
        ori = {k: v * (1 - feats[i, j]) for j, (k, v) in enumerate(syn.items())}
        entries[f"p{i}_20"] = {"grade": int(g), "original": ori, "synthesised": syn}
    path = tmp_path / "heights.json"
    path.write_text(json.dumps(entries))
    table = G.load_heights_table(path)
    assert table.neighbours is None and table.original.shape == (20, 3)
    np.testing.assert_allclose(G.rhlv_features(table.original, table.synthesised), feats)
    res = G.run_grading(table, tmp_path / "out")
    assert res["baseline"] is None and res["rhlv"]["macro_f1"] == pytest.approx(1.0)
    assert not (tmp_path / "out" / "confusion_matrix_baseline.png").exists()


def test_input_errors(tmp_path, run_script, capsys):
    with pytest.raises(FileNotFoundError):
        G.load_heights_table(tmp_path / "missing.csv")
    assert run_script("grade", ["--heights", tmp_path / "missing.csv", "--out", tmp_path]) == 2
    assert capsys.readouterr().err.startswith("error: heights file not found")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,grade,ori_a\nx,0,1\n")
    with pytest.raises(ValueError, match="missing columns"):
        G.load_heights_table(bad)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps({"a": {"grade": 0, "original": {"anterior_mm": 1}}}))
    with pytest.raises(ValueError, match="'a'"):
        G.load_heights_table(bad_json)


def test_cli_healthivert_protocol_scores_val_per_fold(tmp_path, capsys, run_script):
    """--protocol healthivert: the same features graded the original's way (its folds over
    train + test in file order, val scored), the report naming the protocol."""
    heights = tmp_path / "heights.csv"
    _write_csv(heights)
    _, grades = _separable(n_per=8, seed=1)
    splits: dict[str, dict[str, int]] = {"test": {}, "train": {}, "val": {}}
    for i, g in enumerate(grades):  # 2 val, 2 test and 4 train vertebrae per grade
        splits[{0: "val", 1: "test"}.get(i % 4, "train")][f"p{i}_20"] = int(g)
    (tmp_path / "splits.json").write_text(json.dumps(splits))
    out = tmp_path / "grading"
    argv = ["--heights", str(heights), "--out", str(out), "--protocol", "healthivert"]
    assert run_script("grade", argv) == 2
    assert "--splits" in capsys.readouterr().err
    assert run_script("grade", [*argv, "--splits", tmp_path / "splits.json"]) == 0
    data = json.loads((out / "grading.json").read_text())
    assert data["protocol"] == "healthivert" and "unshuffled" in data["protocol_note"]
    res = data["rhlv"]
    assert (res["n_train_test"], res["n_val"], res["folds"]) == (24, 8, 5)
    assert res["labels"] == [0, 1, 2, 3]
    assert res["macro_f1"] == pytest.approx(1.0) and len(res["fold_macro_f1"]) == 5
    assert "healthivert" in capsys.readouterr().out
