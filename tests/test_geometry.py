"""The ground floor: pixel constants, key parsing and path confinement."""

from __future__ import annotations

import pytest

from util.geometry import band_px, band_rows, d3_band_px, inside, make_key, split_key, volume_path


def test_pixel_constants_scale_with_img_size():
    assert (band_px(256), band_px(128), band_px(64)) == (40, 20, 10)
    assert (d3_band_px(256), d3_band_px(64)) == (70, 18)
    assert band_rows(256) == (108, 148)


@pytest.mark.parametrize(
    "key,expected",
    [("0007_20", ("0007", 20)), ("sub-verse004_19", ("sub-verse004", 19)), ("a_b_3", ("a_b", 3))],
)
def test_split_key(key, expected):
    assert split_key(key) == expected
    assert make_key(*expected) == key


@pytest.mark.parametrize(
    "key",
    ["../../../../tmp/x/evil_20", "a/b_3", "..x_3", "x.._3", "_3", "abc", "abc_x", "/abs_3", ""],
)
def test_split_key_refuses_paths_and_malformed_ids(key):
    with pytest.raises(ValueError, match="vertebra id"):
        split_key(key)


def test_volume_path_stays_inside_root(tmp_path):
    assert volume_path(tmp_path, "CT", "p1_20") == tmp_path / "CT" / "p1_20.nii.gz"
    with pytest.raises(ValueError, match="vertebra id"):
        volume_path(tmp_path, "CT", "../../etc/passwd_1")
    with pytest.raises(ValueError, match="unknown volume folder"):
        volume_path(tmp_path, "../x", "p1_20")


def test_inside_refuses_paths_outside(tmp_path):
    assert inside(tmp_path / "a" / "b.txt", tmp_path) == (tmp_path / "a" / "b.txt").resolve()
    with pytest.raises(ValueError, match="outside the output folder"):
        inside(tmp_path / ".." / "x.txt", tmp_path)
