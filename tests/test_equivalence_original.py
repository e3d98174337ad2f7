"""Our code against the original HealthiVert-GAN code on identical inputs.

Each test feeds the same tensors to a function of ours and to the original's code (imported
from ../shared/reference/healthivert_original by ``tests/healthivert_original.py``, never
copied) and compares one number with a stated tolerance.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from healthivert_original import ORIGINAL, SHARED_DATA, original_module, requires_original
from torch.utils.data import default_collate

from data.vertebra_dataset import VertebraDataset
from evaluation.healthivert_protocol import (
    grade_original_protocol,
    rhlv_original,
    split_rows,
    synthesis_metrics_original,
)
from models import create_model
from models.discriminators import (
    GANLoss,
    HealthiVertDiscriminators,
    NLayerDiscriminator,
    init_weights,
)
from models.gan_generator import contextual_attention
from models.generator_base import GeneratorOutput, TrainingOutput
from models.losses import dice_loss, hard_sobel_edge_loss
from models.shrm import shrm_compose_on_truth
from options.train_options import TrainOptions
from util.misc import resolve_device
from util.nifti_io import load_nifti, save_nifti

pytestmark = requires_original


# ----------------------------------------------------------------------------- attention
def _band_masks(size: int, n: int) -> torch.Tensor:
    """(n, 1, size, size): the centred band, a taller band, a band lower down."""
    h2 = 40 * size // 256
    m = torch.zeros(n, 1, size, size)
    c = size // 2
    for i, (top, rows) in enumerate([(c - h2 // 2, h2), (c - h2, 2 * h2), (c, h2)][:n]):
        m[i, :, top : top + rows] = 1.0
    return m


def _cosine_in_hole(ours: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) cosine similarity of the two feature maps over the hole (feature pixels whose block
    touches the mask), per sample."""
    hole = F.adaptive_max_pool2d(mask, ours.shape[-2:]).expand_as(ours) > 0
    return torch.stack([F.cosine_similarity(o[h], r[h], dim=0) for o, r, h in zip(ours, ref, hole)])


def test_contextual_attention_matches_the_original_in_the_hole() -> None:
    """Tolerance: cosine > 0.999 per sample (measured 1.0000000) and |diff| < 1e-4 in the hole.

    The original runs sample by sample (its batched form uses sample 0's mask for every
    sample); ours runs the batch at once, each sample with its own mask."""
    ca = original_module("models.inpaint_networks").ContextualAttention(
        False, ksize=3, stride=1, rate=2, fuse_k=3, softmax_scale=10, fuse=True
    )
    torch.manual_seed(0)
    for size, channels in ((64, 8), (256, 16)):
        feat = torch.randn(3, channels, size // 4, size // 4)
        mask = _band_masks(size, 3)
        ours, _ = contextual_attention(feat, mask)
        one = [(feat[i : i + 1], mask[i : i + 1]) for i in range(3)]
        ref = torch.cat([ca(f, f, m)[0] for f, m in one])
        cos = _cosine_in_hole(ours, ref, mask)
        assert bool((cos > 0.999).all()), cos
        hole = F.adaptive_max_pool2d(mask, feat.shape[-2:]).expand_as(feat) > 0
        torch.testing.assert_close(ours[hole], ref[hole], rtol=0, atol=1e-4)
        assert torch.equal(ours[~hole], feat[~hole])  # ours keeps the known features


# ----------------------------------------------------------------------------- case 0007
KEYS_0007 = ("0007_20", "0007_21", "0007_22")


def _probe_root(root: Path) -> Path:
    """Case 0007's straightened labels with a probe CT whose value is the row index
    (``ct[r] = r``, so every image row names its source row) and a heatmap of known values
    ``(k + 0.5) / 255`` (exact after the original's ``* 255`` and uint8 truncation)."""
    labels = SHARED_DATA / "healthivert_0007" / "straightened_label"
    for key in KEYS_0007:
        label, affine, _ = load_nifti(labels / f"{key}.nii.gz")
        rows = np.arange(label.shape[0], dtype=np.uint8)[:, None, None]
        save_nifti(root / "label" / f"{key}.nii.gz", label, affine)
        save_nifti(root / "CT" / f"{key}.nii.gz", np.broadcast_to(rows, label.shape), affine)
        r, c, z = np.indices(label.shape)
        k = (r * 7 + c * 3 + z) % 255
        save_nifti(root / "heatmap" / f"{key}.nii.gz", ((k + 0.5) / 255).astype(np.float32), affine)
    # 20 grade 1 (normal for the original), 21 grade 2, 22 grade 0; 18, 19, 23 in no split
    splits = {"train": {"0007_20": 1, "0007_21": 2, "0007_22": 0}}
    (root / "vertebra_data.json").write_text(json.dumps(splits))
    return root


@pytest.fixture(scope="module")
def probe_root(tmp_path_factory) -> Path:
    if SHARED_DATA is None or not (SHARED_DATA / "healthivert_0007").is_dir():
        pytest.skip("shared case 0007 labels are absent")
    return _probe_root(tmp_path_factory.mktemp("probe0007"))


def _our_options(root: Path, ckpt: Path, *extra: str) -> argparse.Namespace:
    argv = ["--dataroot", str(root), "--checkpoints_dir", str(ckpt), "--name", "ours"]
    argv += ["--img_size", "256", "--gpu_ids", "-1", "--num_workers", "0", "--batch_size", "2"]
    opt = TrainOptions([*argv, "--preset", "healthivert", *extra]).gather_options()
    opt.isTrain = True
    opt.device, opt.gpu_ids = resolve_device("-1")
    opt.max_dataset_size = float("inf")
    return opt


def _original_model(ckpt: Path, monkeypatch):
    """The original's Pix2PixModel on the CPU with its default training options."""
    p2p = original_module("models.pix2pix_model")
    base = original_module("models.inpaint_networks").Generator

    class CpuGenerator(base):  # the original builds Generator(params, True) and calls .cuda()
        def __init__(self, params, use_cuda):
            super().__init__(params, False)

        def cuda(self, *args, **kwargs):
            return self

    monkeypatch.setattr(p2p, "Generator", CpuGenerator)
    opt = argparse.Namespace(
        gpu_ids=[], isTrain=True, checkpoints_dir=str(ckpt), name="orig", preprocess="none",
        input_nc=1, output_nc=1, ndf=64, netD="basic", n_layers_D=3, norm="batch",
        init_type="normal", init_gain=0.02, gan_mode="vanilla", lr=2e-4, beta1=0.5,
        lambda_L1=200.0, direction="BtoA",
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its networks
        return p2p.Pix2PixModel(opt)


def _original_batch(batch: dict) -> dict:
    """Our batch in the original's keys: with ``--direction BtoA`` its 'A' is the ground truth
    (our B geometry, the vertebra on rows x1 .. x1 + h) and 'B' the masked input."""
    x1 = batch["x1"]
    return {
        "A": batch["B"],
        "B": batch["A"],
        "A_mask": batch["vert_mask"],
        "CAM": batch["CAM"],
        "normal_vert": batch["normal_vert_context"],
        "height": batch["height"].long(),
        "x1": x1,
        "x2": x1 + batch["height"].long(),
        "mask": batch["mask"],
        "h2": batch["h2"],
        "slice_ratio": batch["slice_ratio"],
        "A_paths": list(batch["id"]),
        "B_paths": list(batch["id"]),
    }


def _replayed_outputs(orig, batch: dict):
    """The original generator's seven outputs on ``batch`` (eval mode: spectral norm does not
    step), and a function giving fresh leaf copies of them (the same values every call)."""
    orig.set_input(_original_batch(batch))
    orig.netG.eval()
    with torch.no_grad():
        fixed = [t.detach().float() for t in orig.netG(orig.real_A, orig.mask, 1 - orig.CAM,
                                                        orig.slice_ratio)]  # fmt: skip

    def replay() -> list[torch.Tensor]:
        return [t.clone().requires_grad_() for t in fixed]

    return replay


def _inject(ours, replay, monkeypatch) -> None:
    """Make our model's generator return the original generator's outputs (isolating the
    generator architecture, which differs by design) in our output order and units."""

    def training_forward(inp, target):
        coarse, fine, x1, x2, _flow, h1, h2 = replay()
        flow = torch.zeros(x1.shape[0], 2, *x1.shape[-2:])  # the original's is an RGB picture
        out = GeneratorOutput(coarse, fine, x1, x2, flow, h1, h2)
        return TrainingOutput(out, {}, torch.ones(x1.shape[0]))

    monkeypatch.setattr(ours.netG, "training_forward", training_forward)


def _one_step(probe_root, tmp_path, monkeypatch, *flags):
    """One optimisation step of ours (``--preset healthivert`` + ``flags``) and of the original
    on the same batch, discriminator weights and generator outputs; returns both models."""
    opt = _our_options(probe_root, tmp_path, *flags)
    ds = VertebraDataset.from_opt(opt)
    batch = default_collate([ds.get_sample("0007_22", 30), ds.get_sample("0007_20", 33)])
    torch.manual_seed(0)
    ours = create_model(opt)
    orig = _original_model(tmp_path, monkeypatch)
    for i in (1, 2, 3):  # the same (the original's N(0, 0.02)) discriminator weights
        getattr(ours.netD, f"D_{i}").load_state_dict(getattr(orig, f"netD_{i}").state_dict())
    replay = _replayed_outputs(orig, batch)
    orig.netG = lambda *args: tuple(replay())
    _inject(ours, replay, monkeypatch)
    ours.set_input(batch)
    ours.optimize_parameters()
    orig.optimize_parameters()
    return ours, orig


def _terms(ours, orig) -> dict[str, tuple[float, float]]:
    """Each weighted generator loss term and each D loss: (ours, original)."""
    w = ours.weights
    pairs = {
        "G_GAN": (w.lambda_GAN * ours.loss_G_GAN, orig.loss_G_GAN),
        "G_L1": (w.lambda_L1 * ours.loss_G_L1, orig.loss_G_maskL1),
        "G_dice_coarse": (w.lambda_dice_coarse * ours.loss_G_dice_coarse, orig.loss_coarse_Dice),
        "G_dice_fine": (w.lambda_dice_fine * ours.loss_G_dice_fine, orig.loss_G_Dice),
        "G_edge": (w.lambda_edge * ours.loss_G_edge, orig.loss_edge),
        "G_height": (w.lambda_height * ours.loss_G_height, orig.loss_h),
        "G": (ours.loss_G, orig.loss_G),
    }
    pairs.update(
        {f"D_{i}": (getattr(ours, f"loss_D_{i}"), getattr(orig, f"loss_D_{i}")) for i in (1, 2, 3)}
    )
    return {k: (_number(a), _number(b)) for k, (a, b) in pairs.items()}


def _number(x) -> float:
    return float(torch.as_tensor(x).detach())


def test_one_training_step_with_the_preset_matches_the_original(probe_root, tmp_path, monkeypatch):
    """``--preset healthivert --l1_batch_norm --edge_loss original`` (the preset plus the two
    opt-in bugs) against the original's ``optimize_parameters`` on the same batch (case 0007,
    probe CT, 256 px), discriminator weights and generator outputs.

    Tolerance: every D loss, every weighted G term and the total G loss within 1e-4 relative
    (measured: <= 2e-7). Isolated by design: the generator architecture (both models are fed
    the original generator's outputs; see the differences table in docs/ARCHITECTURE.md)."""
    ours, orig = _one_step(
        probe_root, tmp_path, monkeypatch, "--l1_batch_norm", "--edge_loss", "original"
    )
    for name, (a, b) in _terms(ours, orig).items():
        assert a == pytest.approx(b, rel=1e-4, abs=1e-7), name
    assert float(orig.loss_G) > 1.0  # a real loss, not a trivially equal zero


def test_without_the_opt_in_bugs_only_l1_and_edge_differ(probe_root, tmp_path, monkeypatch):
    """The preset alone: the L1 term is the original's times the batch size (2: the original
    divides by the band pixels of the whole batch), the edge loss is computed on the soft
    segmentation; every other term as the original's (1e-4 relative)."""
    ours, orig = _one_step(probe_root, tmp_path, monkeypatch)
    terms = _terms(ours, orig)
    a, b = terms.pop("G_L1")
    assert a == pytest.approx(2 * b, rel=1e-4)
    a, b = terms.pop("G_edge")
    assert a != pytest.approx(b, rel=1e-2)
    terms.pop("G")
    for name, (a, b) in terms.items():
        assert a == pytest.approx(b, rel=1e-4, abs=1e-7), name


# ----------------------------------------------------------------------------- dataset
CAM_FOLDER = "/temp_data/zhangqi/datasets/HealthiVert_GAN/straighten_local/heatmap_CT"


def _original_sample(root: Path, key: str, k: int, monkeypatch) -> tuple[dict, np.ndarray]:
    """The original ``AlignedDataset.__getitem__`` of ``key`` at slice ``k`` (its random
    slice choice answered with ``k``), and the sampling weights it drew ``k`` with."""
    ad = original_module("data.aligned_dataset")
    monkeypatch.chdir(root)  # it reads vertebra_data_local.json from the working directory
    (root / "vertebra_data_local.json").write_text((root / "vertebra_data.json").read_text())

    class Nib:  # its heatmaps live at a fixed absolute path: serve ours
        @staticmethod
        def load(path):
            path = str(path)
            if path.startswith(CAM_FOLDER):
                path = str(root / "heatmap" / Path(path).name)
            return nib.load(path)

    drawn = {}

    def choice(values, p=None):
        drawn["weights"] = np.asarray(p)
        assert k in list(values)
        return k

    monkeypatch.setattr(ad, "nib", Nib)
    monkeypatch.setattr(ad.np.random, "choice", choice)
    opt = argparse.Namespace(
        phase="train", vert_class="normal", dataroot=str(root), load_size=256, crop_size=256,
        direction="BtoA", input_nc=1, output_nc=1,
    )  # fmt: skip
    ds = ad.AlignedDataset(opt)
    sample = ds[list(ds.vertebra_id).index(key)]
    return sample, drawn["weights"]


def _rows(img: torch.Tensor) -> np.ndarray:
    """Source row of every row of a probe CT image in [-1, 1] (``ct[r] = r``), column 0."""
    return np.rint((img.reshape(256, 256)[:, 0].numpy() + 1) * 127.5).astype(int)


@pytest.mark.parametrize("key,k", [("0007_22", 30), ("0007_22", 41), ("0007_20", 33)])
def test_dataset_sample_matches_the_original(probe_root, monkeypatch, key, k):
    """``--preset healthivert`` data options against ``AlignedDataset.__getitem__`` on case 0007
    (probe CT, 256 px). Ours centres the vertebra (B geometry) where the original leaves the
    slice unshifted: every image is compared after the shift ``s = our x1 - its x1``, on the
    rows both have. Tolerances: exact for heights, rows, masks and labels; slice_ratio 1e-7
    (ours is float32); the sampling weights 1e-9; the CAM 0.5 / 255 (the original truncates
    it to uint8)."""
    orig, weights = _original_sample(probe_root, key, k, monkeypatch)
    ds = VertebraDataset(
        dataroot=probe_root, phase="train", img_size=256, seed=0, vert_class="all",
        slice_mode="all", height_convention="span", cam_in_band="zero",
        slice_weighting="original", band_fill=-1.0,
    )  # fmt: skip
    ours = ds.get_sample(key, k)
    h = int(ours["height"])
    assert h == orig["height"] == orig["x2"] - orig["x1"]
    assert float(ours["slice_ratio"]) == pytest.approx(orig["slice_ratio"], abs=1e-7)  # float32
    info = ds.infos[key]  # the original retries invalid draws: its weights on our valid slices
    w = weights[info.valid - info.lo]
    np.testing.assert_allclose(info.probs, w / w.sum(), atol=1e-9)

    s = int(ours["x1"]) - int(orig["x1"])
    both = slice(max(0, s), 256 + min(0, s))  # our rows that exist in the original's frame
    theirs = slice(max(0, -s), 256 - max(0, s))

    def same(a: torch.Tensor, b: torch.Tensor, atol: float = 0.0) -> None:
        np.testing.assert_allclose(
            a.reshape(256, 256)[both].numpy(), b.reshape(256, 256)[theirs].numpy(), atol=atol
        )

    assert np.array_equal(_rows(ours["B"])[both], _rows(orig["A"])[theirs])  # ground truth
    assert np.array_equal(_rows(ours["A"])[both], _rows(orig["B"])[theirs])  # masked input
    same(ours["A"], orig["B"], atol=1e-6)  # the band too (-1, the original's uint8 0)
    same(ours["mask"], orig["mask"])
    same(ours["vert_mask"], orig["A_mask"])
    same(ours["normal_vert_context"], orig["normal_vert"])
    same(ours["CAM"], orig["CAM"], atol=0.5 / 255 + 1e-6)


# ----------------------------------------------------------------------------- losses, D
def test_dice_edge_and_gan_losses_match_the_original() -> None:
    """Pure loss functions on the same tensors. Tolerances: Dice (smooth 1e-5) 1e-6 absolute,
    the original's edge loss and both GAN objectives 1e-6 relative (measured: <= 1e-7)."""
    p2p = original_module("models.pix2pix_model")
    edge = original_module("models.edge_operator").Sobel(requires_grad=False)
    networks = original_module("models.networks")
    torch.manual_seed(1)
    pred = torch.rand(3, 1, 64, 64)
    target = (torch.rand(3, 1, 64, 64) > 0.7).float()
    ours = dice_loss(pred, target, smooth=1e-5)
    theirs = 1 - float(p2p.diceCoeff(pred, target, activation="none"))
    assert float(ours) == pytest.approx(theirs, abs=1e-6)
    hard = (pred > 0.5).float()
    ref = F.mse_loss(edge(hard), edge(target))
    assert float(hard_sobel_edge_loss(pred, target)) == pytest.approx(float(ref), rel=1e-6)
    logits = torch.randn(3, 1, 30, 30)
    for mode in ("vanilla", "lsgan"):
        theirs = networks.GANLoss(mode)
        for real in (True, False):
            a = GANLoss(mode)(logits, real, for_discriminator=True)
            assert float(a) == pytest.approx(float(theirs(logits, real)), rel=1e-6), (mode, real)


def test_patchgan_and_its_init_match_the_original() -> None:
    """Our PatchGAN (ndf 64, 3 layers, batch norm) holds the original's weights key by key and
    gives its output (1e-5 absolute); our N(0, 0.02) init draws what pix2pix's does (the
    same generator state gives the same weights, exactly)."""
    networks = original_module("models.networks")
    with contextlib.redirect_stdout(io.StringIO()):
        torch.manual_seed(5)
        theirs = networks.define_D(1, 64, "basic", 3, "batch", "normal", 0.02, [])
    torch.manual_seed(5)
    ours = init_weights(NLayerDiscriminator(input_nc=1, ndf=64, n_layers=3, norm="batch"))
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.randn(2, 1, 256, 256)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- SHRM, D_3
def test_shrm_and_d3_input_match_the_original(probe_root, tmp_path, monkeypatch) -> None:
    """The original's SHRM loop (both stages) and its D_3 input (band rows x 70 central
    columns) against ``shrm_compose_on_truth`` and ``HealthiVertDiscriminators(d3_region=
    "band_columns").crop_band`` for restored heights from the measured one up to the band
    (odd and even differences). Tolerance: exact (the same pixels are copied)."""
    ds = VertebraDataset(
        dataroot=probe_root, phase="train", img_size=256, seed=0, vert_class="all",
        slice_mode="all", height_convention="span", cam_in_band="zero",
        slice_weighting="original",
    )  # fmt: skip
    batch = default_collate([ds.get_sample("0007_22", 30), ds.get_sample("0007_21", 33)])
    orig = _original_model(tmp_path, monkeypatch)
    orig.set_input(_original_batch(batch))
    d3 = HealthiVertDiscriminators(img_size=256, ndf=4, d3_region="band_columns")
    torch.manual_seed(2)
    heights = batch["height"]
    x1, x2 = torch.rand(2, 2, 1, 256, 256) * 2 - 1
    for extra in (-5, 0, 1, 2, 5, 16):  # restored height minus the measured one (< 0: none)
        rows = (heights + extra).clamp(max=40)
        pred = [((rows - 0.5) / 40).reshape(2, 1), ((rows - 0.25) / 40).reshape(2, 1)]
        outs = (torch.rand(2, 1, 256, 256), torch.rand(2, 1, 256, 256), x1, x2, None, *pred)
        orig.netG = lambda *args, outs=outs: outs
        orig.forward()
        restored = torch.maximum(rows, heights).long()
        ours1 = shrm_compose_on_truth(x1, batch["B"], restored, heights)
        ours2 = shrm_compose_on_truth(x2, batch["B"], restored, heights)
        assert torch.equal(ours1, orig.fake_B_coarse), extra
        assert torch.equal(ours2, orig.fake_B), extra
        assert torch.equal(d3.crop_band(ours2), orig.fake_B_local), extra


# ----------------------------------------------------------------------------- evaluation
LABEL_0007_22 = (SHARED_DATA or Path(".")) / "healthivert_0007/straightened_label/0007_22.nii.gz"


def _wedge(label: np.ndarray, vid: int, rows: int) -> np.ndarray:
    """``label`` with vertebra ``vid`` losing up to ``rows`` top rows, linearly from its most
    anterior column (``rows``) to its most posterior one (0): an anterior wedge."""
    out = label.copy()
    cols = np.nonzero(label == vid)[1]
    c0, c1 = cols.min(), cols.max()
    for c in range(c0, c1 + 1):
        cut = int(round(rows * (c1 - c) / max(c1 - c0, 1)))
        for k in range(label.shape[2]):
            r = np.flatnonzero(out[:, c, k] == vid)
            if r.size:
                out[r[:cut], c, k] = 0
    return out


@pytest.mark.skipif(SHARED_DATA is None, reason="shared data absent")
@pytest.mark.parametrize("case", ["same", "wedge", "shorter_synthesis"])
def test_rhlv_matches_the_original(case: str) -> None:
    """``rhlv_original`` against ``RHLV_quantification.calculate_rhlv`` (its slice range and
    centre computed as its ``process_datasets_to_excel`` does) on case 0007, vertebra 22:
    all five numbers within 1e-9 (measured: equal)."""
    rq = original_module("evaluation.RHLV_quantification")
    label, _, _ = load_nifti(LABEL_0007_22)
    label = label.astype(np.uint8)
    healthy = label
    if case == "wedge":
        label = _wedge(label, 22, 10)
    elif case == "shorter_synthesis":
        healthy = _wedge(label, 22, 4)
    ours = rhlv_original(healthy, label, 22)
    fake, seg = (healthy == 22).astype(float), (label == 22).astype(float)
    z = np.nonzero(seg)[2]
    theirs = rq.calculate_rhlv(fake, seg, int(np.mean(z)), (z.max() - z.min()) // 5, "v", 0.7)
    np.testing.assert_allclose(
        [ours.all, ours.anterior, ours.middle, ours.posterior, ours.relative_height_label],
        theirs,
        rtol=0,
        atol=1e-9,
    )
    if case == "wedge":
        assert ours.anterior > ours.middle > ours.posterior >= 0


def _split_features(seed: int = 0) -> tuple[dict[str, dict[str, int]], dict[str, np.ndarray]]:
    """The original's VerSe2019 split (1,460 graded vertebrae, file order test, train, val)
    with RHLV-like features that grow with the grade, plus noise."""
    splits = json.loads((ORIGINAL / "data" / "vertebra_data.json").read_text())
    rng = np.random.default_rng(seed)
    feats = {}
    for ids in splits.values():
        for key, g in ids.items():
            base = np.array([0.08, 0.06, 0.03]) * g
            feats[key] = base + rng.normal(0, 0.06, 3)
    return splits, feats


def test_grading_protocol_matches_the_original(tmp_path, monkeypatch) -> None:
    """``grade_original_protocol`` against ``SVM_grading.evaluate_svm`` (its Excel read replaced
    by the same table) on the original's split: the fold-averaged macro F1, precision, recall
    and accuracy within 1e-9 (its report prints them in full precision)."""
    pd = pytest.importorskip("pandas")
    svm = original_module("evaluation.SVM_grading")
    splits, feats = _split_features()
    rows = [
        {"Vertebra": k, "Label": g, "Dataset": ph, "Pre RHLV": feats[k][0],
         "Mid RHLV": feats[k][1], "Post RHLV": feats[k][2]}
        for ph, ids in splits.items() for k, g in ids.items()
    ]  # fmt: skip
    monkeypatch.setattr(svm.pd, "read_excel", lambda path: pd.DataFrame(rows))
    report = tmp_path / "svm.txt"
    svm.evaluate_svm("table.xlsx", ["Pre RHLV", "Mid RHLV", "Post RHLV"], str(report))
    text = report.read_text()
    grades = {k: g for ids in splits.values() for k, g in ids.items()}
    train_test, val = split_rows(splits, list(grades))
    ours = grade_original_protocol(
        np.array([feats[k] for k in train_test]),
        [grades[k] for k in train_test],
        np.array([feats[k] for k in val]),
        [grades[k] for k in val],
    )
    for name, key in (
        ("F1 Score", "macro_f1"),
        ("Precision", "macro_precision"),
        ("Recall", "macro_recall"),
        ("Accuracy", "accuracy"),
    ):
        line = next(x for x in text.splitlines() if x.startswith(f"Average {name}:"))
        assert ours[key] == pytest.approx(float(line.split()[-3]), abs=1e-9), name
    assert ours["n_train_test"] == 1095 and ours["n_val"] == 365


@pytest.mark.skipif(SHARED_DATA is None, reason="shared data absent")
def test_synthesis_metrics_match_the_original(tmp_path) -> None:
    """``synthesis_metrics_original`` against ``generation_eval_sagittal.process_images`` on
    NIfTI files of case 0007, vertebra 22 (a textured CT, a noisy synthesis, a label one row
    off): all seven numbers within 1e-9."""
    ge = original_module("evaluation.generation_eval_sagittal")
    label, affine, _ = load_nifti(
        SHARED_DATA / "healthivert_0007/straightened_label/0007_22.nii.gz"
    )
    label = label.astype(np.uint8)
    rng = np.random.default_rng(3)
    ct = np.clip(rng.normal(80, 20, label.shape) + 90 * (label > 0), 0, 255).astype(np.uint8)
    fake_ct = np.clip(ct + rng.normal(0, 12, ct.shape) * (label == 22), 0, 255).astype(np.uint8)
    fake_label = np.roll(label, 1, axis=0)
    paths = {}
    for name, vol in (("ct", ct), ("fake_ct", fake_ct), ("seg", label), ("fake_seg", fake_label)):
        paths[name] = tmp_path / name / "0007_22.nii.gz"
        save_nifti(paths[name], vol, affine)
    theirs = ge.process_images(*(str(paths[n]) for n in ("ct", "fake_ct", "seg", "fake_seg")))
    ours = synthesis_metrics_original(ct, fake_ct, label, fake_label, 22)
    keys = ("global_psnr", "global_ssim", "patch_psnr", "patch_ssim", "iou", "rv_diff", "dice")
    np.testing.assert_allclose([ours[k] for k in keys], theirs, rtol=0, atol=1e-9)
    assert 0.5 < ours["dice"] < 1 and ours["patch_psnr"] > 0
