"""Pix2PixModel: training composes with the tested SHRM, and one inference pipeline
(``infer``) with per-call steps that leaves the model untouched."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import default_collate

from data.vertebra_dataset import VertebraDataset
from models import create_model
from models.generator_base import GeneratorOutput
from models.pix2pix_model import InferenceOutput
from models.shrm import restored_height_rows, shrm_compose, shrm_outputs
from options.train_options import TrainOptions

S = 64
SPLITS = {"train": {"p1_20": 0, "p2_20": 1}}


@pytest.fixture
def batch(vertebra_root_factory) -> dict:
    root = vertebra_root_factory(SPLITS, size=S, depth=16)
    ds = VertebraDataset(
        dataroot=root, phase="train", img_size=S, seed=0, vert_class="all", slice_mode="all"
    )
    keys = ds.keys()
    return default_collate([ds.get_sample(keys[0], 4), ds.get_sample(keys[1], 8)])


def _model(tmp_path, netg: str, *extra: str):
    # No EMA: its copy would keep the weights from before the perturbation below.
    argv = ["--netG_type", netg, "--img_size", str(S), "--gpu_ids", "-1", "--name", "m"]
    argv += ["--ema_decay", "0"]
    opt = TrainOptions([*argv, "--checkpoints_dir", str(tmp_path), *extra]).parse(save=False)
    torch.manual_seed(0)
    model = create_model(opt)
    with torch.no_grad():  # leave the zero-initialised output layers: a non-trivial network
        for p in model.netG.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("netg", ["gan", "diffusion"])
def test_training_forward_composes_exactly_like_shrm_outputs(tmp_path, batch, netg):
    model = _model(tmp_path, netg)
    model.set_input(batch)
    torch.manual_seed(1)
    model.forward()
    ref = shrm_outputs(model.outputs, batch["height"], model.h2)
    assert torch.equal(model.fake_B, ref.composed.x_stage2)
    assert torch.equal(model.fake_B1, ref.composed.x_stage1)
    assert torch.equal(model.fine_seg, ref.composed.fine_seg)
    assert torch.equal(model.coarse_seg, ref.composed.coarse_seg)
    # Each image is its own context in shrm_outputs; with the input's context instead (the
    # original's composition) the result is the same: the stages keep the input outside the band.
    o, h2 = model.outputs, model.h2
    rows2 = restored_height_rows(o.pred2_h, batch["height"], h2)
    assert torch.equal(model.fake_B, shrm_compose(o.x_stage2, batch["A"], rows2, h2))


@pytest.mark.parametrize("netg,steps", [("gan", None), ("diffusion", 2)])
def test_infer_returns_the_documented_output_and_leaves_the_model_alone(
    tmp_path, batch, netg, steps
):
    model = _model(tmp_path, netg)
    model.eval()
    before = dict(vars(model))
    out = model.infer(batch, steps=2, generator=torch.Generator().manual_seed(0))
    assert vars(model).keys() == before.keys()
    assert all(vars(model)[k] is v for k, v in before.items())
    assert isinstance(out, InferenceOutput) and isinstance(out.raw, GeneratorOutput)
    assert out.steps == steps and out.std is None and out.height_std is None
    for name in ("fake_B", "fake_B1", "fine_seg", "coarse_seg"):
        t = getattr(out, name)
        assert t.shape == (2, 1, S, S) and t.dtype == torch.float32, name
    assert -1 <= out.fake_B.min() and out.fake_B.max() <= 1
    assert 0 <= out.fine_seg.min() and out.fine_seg.max() <= 1
    h2 = model.h2
    for rows in (out.rows1, out.rows2):
        assert rows.shape == (2,) and rows.dtype == torch.int64
        assert bool(((rows >= batch["height"]) & (rows >= 1) & (rows <= h2)).all())
    ref = shrm_outputs(out.raw, batch["height"], h2)
    assert torch.equal(out.fake_B, ref.composed.x_stage2)
    assert torch.equal(out.rows2, ref.rows2) and torch.equal(out.rows1, ref.rows1)


def test_steps_default_to_the_flag_and_are_per_call(tmp_path, batch):
    model = _model(tmp_path, "diffusion", "--num_inference_steps", "3")
    model.eval()
    assert not hasattr(model, "sampling_steps")

    def run(**kw) -> InferenceOutput:
        return model.infer(batch, generator=torch.Generator().manual_seed(0), **kw)

    first = run()
    assert first.steps == 3 and run(steps=1).steps == 1
    again = run()
    assert again.steps == 3 and torch.equal(again.fake_B, first.fake_B)
    assert _model(tmp_path, "gan", "--num_inference_steps", "3").infer(batch).steps is None
    with pytest.raises(ValueError, match="--num_inference_steps"):
        _model(tmp_path, "gan", "--num_inference_steps", "0")


def test_precision_bf16_applies_to_inference(tmp_path, batch):
    """One switch: --precision bf16 runs the sampler's network under bf16 autocast."""
    fp32 = _model(tmp_path, "diffusion", "--num_inference_steps", "2")
    bf16 = _model(tmp_path, "diffusion", "--num_inference_steps", "2", "--precision", "bf16")
    bf16.netG.load_state_dict(fp32.netG.state_dict())
    fp32.eval()
    bf16.eval()
    a = fp32.infer(batch, generator=torch.Generator().manual_seed(0))
    b = bf16.infer(batch, generator=torch.Generator().manual_seed(0))
    assert b.fake_B.dtype == torch.float32
    assert not torch.equal(a.fake_B, b.fake_B)  # the network ran in bf16 ...
    assert float((a.fake_B - b.fake_B).abs().mean()) < 0.05  # ... and tracks fp32
