"""Device options of the stand-alone tools (train_classifier.py, make_heatmaps.py)."""

import argparse

import pytest
import torch

from util.misc import add_device_options, device_from_options


def test_device_options_set_threads_and_name_a_bad_value():
    parser = argparse.ArgumentParser()
    add_device_options(parser)
    before = torch.get_num_threads()
    try:
        args = parser.parse_args(["--gpu_ids", "-1", "--num_threads", "1"])
        assert device_from_options(args) == "cpu"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert device_from_options(parser.parse_args(["--gpu_ids", "-1"])) == "cpu"
    with pytest.raises(ValueError, match="--num_threads must be >= 0"):
        device_from_options(parser.parse_args(["--num_threads", "-1"]))
