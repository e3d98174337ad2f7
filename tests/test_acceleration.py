"""The GPU-oriented switches on their CPU paths: --precision fp16 (autocast + GradScaler) and
auto, --compile, pinned-memory loading; and the pieces of distributed training that need no
process group: the sharing sampler, the torchrun environment, the BatchNorm fallback."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import default_collate

from data import EpochSampler, create_dataset
from data.vertebra_dataset import VertebraDataset
from models import create_model
from options.train_options import TrainOptions
from util.distributed import SyncBatchNorm2d, World, sync_batchnorm_, world_from_env
from util.misc import resolve_precision

S = 32
SPLITS = {"train": {"p1_20": 0, "p2_20": 1}}


@pytest.fixture
def root(vertebra_root_factory):
    return vertebra_root_factory(SPLITS, size=64, depth=16)


def _opt(root, tmp_path, *extra: str):
    argv = ["--dataroot", str(root), "--netG_type", "gan", "--img_size", str(S), "--gpu_ids"]
    argv += ["-1", "--name", "m", "--checkpoints_dir", str(tmp_path), "--num_workers", "0"]
    return TrainOptions([*argv, *extra]).parse(save=False)


def _batch(root) -> dict:
    ds = VertebraDataset(
        dataroot=root, phase="train", img_size=S, seed=0, vert_class="all", slice_mode="all"
    )
    keys = ds.keys()
    return default_collate([ds.get_sample(keys[0], 4), ds.get_sample(keys[1], 8)])


def test_precision_auto_follows_the_device(monkeypatch):
    assert resolve_precision("auto", "cpu") == "fp32"
    for p in ("fp32", "bf16", "fp16"):
        assert resolve_precision(p, "cpu") == p
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert resolve_precision("auto", "cuda:0") == "bf16"  # Ampere and newer
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert resolve_precision("auto", "cuda:0") == "fp16"  # T4, V100: fp16 + GradScaler
    with pytest.raises(ValueError, match="--precision"):
        resolve_precision("fp8", "cpu")


def test_fp16_trains_with_gradient_scaling_and_checkpoints_the_scale(root, tmp_path):
    torch.manual_seed(0)
    model = create_model(_opt(root, tmp_path, "--precision", "fp16"))
    assert model.autocast_dtype is torch.float16
    assert all(s.is_enabled() for s in model.scalers.values())
    before = [p.detach().clone() for p in model.netG.parameters()]
    model.set_input(_batch(root))
    init_scale = model.scalers["G"].get_scale()
    model.optimize_parameters()
    params = list(model.netG.parameters())
    if all(torch.equal(a, p) for a, p in zip(before, params, strict=True)):
        # the step overflowed at the initial scale 2**16: skipped, the scale halved
        assert model.scalers["G"].get_scale() == init_scale / 2
        for scaler in model.scalers.values():
            scaler.update(8.0)  # (a scale that fits, instead of halving a dozen more times)
        model.optimize_parameters()
    moved = [not torch.equal(a, p) for a, p in zip(before, params, strict=True)]
    assert any(moved), "no fp16 step was taken"
    assert all(torch.isfinite(p).all() for p in model.netG.parameters())
    assert model.fake_B.dtype == torch.float32  # losses in fp32
    scale = model.extra_state()["scalers"]["G"]["scale"]
    assert scale == model.scalers["G"].get_scale() >= 1
    fresh = create_model(_opt(root, tmp_path, "--precision", "fp16"))
    fresh.load_extra_state(model.extra_state())
    assert fresh.scalers["G"].get_scale() == scale
    # fp32 (the default): scalers disabled, nothing extra in the checkpoint
    plain = create_model(_opt(root, tmp_path))
    assert not plain.scalers["G"].is_enabled() and "scalers" not in plain.extra_state()


def test_compile_keeps_checkpoint_keys_and_outputs(root, tmp_path):
    torch.manual_seed(0)
    plain = create_model(_opt(root, tmp_path))
    torch.manual_seed(0)
    compiled = create_model(_opt(root, tmp_path, "--compile", "eager"))
    assert compiled.netD._compiled_call_impl is not None
    assert all(m._compiled_call_impl is not None for m in compiled.netG.children())
    for name, net in plain.networks().items():
        assert net.state_dict().keys() == compiled.networks()[name].state_dict().keys()
    batch = _batch(root)  # (the generator's contextual attention takes long to trace: D only)
    ct, seg = batch["B"], batch["vert_mask"]
    for a, b in zip(compiled.netD(ct, seg), plain.netD(ct, seg), strict=True):
        torch.testing.assert_close(a, b)


def test_batches_are_pinned_for_cuda_only(root, tmp_path):
    opt = _opt(root, tmp_path)
    assert not create_dataset(opt).pin_memory
    opt.device = "cuda:0"  # (the loader is not iterated: no GPU needed)
    assert create_dataset(opt).pin_memory


@pytest.mark.parametrize("n,world,skip", [(10, 2, 0), (11, 3, 0), (11, 2, 4), (3, 4, 0)])
def test_sampler_shares_each_epoch_between_processes(n, world, skip):
    one = EpochSampler(n, seed=5, shuffle=True)
    one.set_epoch(2, skip)
    shares = []
    for rank in range(world):
        s = EpochSampler(n, seed=5, shuffle=True, rank=rank, world_size=world)
        s.set_epoch(2, skip)
        shares.append(list(s))
        assert len(shares[-1]) == len(s)
    assert len({len(x) for x in shares}) == 1  # as many batches on every rank
    order = list(one)
    dealt = [x[k] for k in range(len(shares[0])) for x in shares]  # the global batches
    assert dealt[: len(order)] == order and set(dealt) == set(order)  # padding: repeats
    s = EpochSampler(n, seed=5, shuffle=True, rank=0, world_size=world)
    s.set_epoch(2, skip)
    assert s.position(0) == skip and s.position(len(s)) == n


def test_resume_position_with_another_world_size():
    """Two processes stop after 2 items each (position 4); one process takes the rest."""
    two = EpochSampler(10, seed=1, shuffle=True, rank=0, world_size=2)
    two.set_epoch(3, 0)
    one = EpochSampler(10, seed=1, shuffle=True)
    one.set_epoch(3, two.position(2))
    full = EpochSampler(10, seed=1, shuffle=True)
    full.set_epoch(3)
    assert list(one) == list(full)[4:]


def test_world_from_torchrun_environment():
    assert world_from_env({}) == World()
    world = world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (world.rank, world.size, world.local_rank, world.is_main) == (3, 4, 1, False)
    with pytest.raises(ValueError, match="RANK"):
        world_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="torchrun"):
        world_from_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_sync_batchnorm_is_batchnorm_without_a_process_group():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 3))
    ref = nn.Sequential(*[m for m in net])  # same modules: compare before/after conversion
    x = torch.randn(3, 1, 8, 8)
    expected = ref(x).detach().clone()
    keys = net.state_dict().keys()
    assert sync_batchnorm_(net) == 1 and isinstance(net[1], SyncBatchNorm2d)
    assert net.state_dict().keys() == keys
    net[1].reset_running_stats()
    torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
