"""The generator EMA warms its decay up, so early checkpoints are not the initial weights."""

import torch
from torch.optim.swa_utils import AveragedModel

from models.pix2pix_model import warmup_ema_multi_avg_fn


def test_warmup_decay_and_integer_buffers():
    net = torch.nn.BatchNorm1d(2)  # float parameters plus an integer buffer
    ema = AveragedModel(net, multi_avg_fn=warmup_ema_multi_avg_fn(0.999), use_buffers=True)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update_parameters(net)  # first update copies
    assert torch.equal(ema.module.weight, torch.ones(2))
    with torch.no_grad():
        net.weight.fill_(12.0)
        net.num_batches_tracked.fill_(7)
    ema.update_parameters(net)  # n = 1: decay (1 + 1) / (10 + 1) = 2/11
    d = 2.0 / 11.0
    assert torch.allclose(ema.module.weight, torch.full((2,), d * 1.0 + (1 - d) * 12.0))
    assert int(ema.module.num_batches_tracked) == 7


def test_decay_is_capped_after_warmup():
    net = torch.nn.Linear(1, 1, bias=False)
    ema = AveragedModel(net, multi_avg_fn=warmup_ema_multi_avg_fn(0.9), use_buffers=True)
    for _ in range(200):
        ema.update_parameters(net)
    with torch.no_grad():
        before = ema.module.weight.clone()
        net.weight.add_(1.0)
    ema.update_parameters(net)  # (1 + n) / (10 + n) > 0.9 by now: the cap 0.9 applies
    assert torch.allclose(ema.module.weight, before + 0.1)
