"""``torch.distributed`` helpers for training under ``torchrun`` (pure: no models/ or data/).

A plain ``python train.py`` has no process group: :func:`world_from_env` gives ``World()``
(rank 0 of 1), every helper here is then a no-op or the identity, and the run is bit-identical
to one without this module.

Under ``torchrun --nproc_per_node N`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set) each
process trains on its own share of every global batch:

* **Gradients** are averaged with one ``all_reduce`` per network and optimiser step
  (:func:`average_gradients`) instead of wrapping the networks in
  ``DistributedDataParallel``: the training step calls the generator through
  ``training_forward`` (DDP only hooks ``forward``), calls the discriminators three times per
  step with their parameters frozen for the third, and some configurations leave parameters
  without a gradient (the diffusion denoiser's heads when a segmenter is used), which DDP
  would only accept with ``find_unused_parameters=True`` (an extra graph traversal per step).
  The networks stay plain modules, so checkpoints hold the same keys for any world size. The
  price: no overlap of communication with the backward pass (DDP's buckets); on a GPU node
  this costs a little speed, not correctness.
* **BatchNorm** layers (the PatchGAN discriminators) normalise with the statistics of the
  global batch (:class:`SyncBatchNorm2d`), so N processes of batch B train the same networks
  as one process of batch N x B. ``nn.SyncBatchNorm`` is CUDA-only; this one runs on any
  backend (gloo on the CPU, NCCL on CUDA).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")

#: How long a rank waits in a collective (e.g. while rank 0 validates or saves) before the
#: job fails. NCCL's default (10 min) is too short for a long validation on rank 0.
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` processes, ``local_rank`` on
    its machine (the CUDA device it uses)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and validates."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env(environ: Mapping[str, str] | None = None) -> World:
    """The :class:`World` that ``torchrun`` describes in ``RANK``, ``WORLD_SIZE`` and
    ``LOCAL_RANK``; ``World()`` when ``WORLD_SIZE`` is unset. ``ValueError`` naming the
    variables when they do not make sense."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return World()
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    try:
        rank, size, local = (int(env.get(n, "0")) for n in names)
        world = World(rank, size, local)
    except ValueError:
        shown = ", ".join(f"{n}={env.get(n)!r}" for n in names)
        raise ValueError(f"torchrun environment not understood: {shown}") from None
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={size}, LOCAL_RANK={local}: need 0 <= RANK < N")
    return world


def rank_device(device: str, world: World) -> str:
    """The device of this rank: the CPU stays the CPU; on CUDA each process of a machine
    takes its own GPU, ``cuda:<LOCAL_RANK>`` (restrict them with ``CUDA_VISIBLE_DEVICES``)."""
    if not world.distributed or not device.startswith("cuda"):
        return device
    if world.local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK {world.local_rank} has no GPU: {torch.cuda.device_count()} visible; "
            "start at most that many processes per machine (--nproc_per_node)"
        )
    return f"cuda:{world.local_rank}"


@contextlib.contextmanager
def process_group(world: World, device: str) -> Iterator[World]:
    """``with process_group(world, device):`` the default process group of a distributed
    ``world`` (NCCL for a CUDA ``device``, else gloo, rendezvous from torchrun's environment),
    destroyed on exit; nothing for one process."""
    if not world.distributed:
        yield world
        return
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(
        "nccl" if cuda else "gloo", rank=world.rank, world_size=world.size, timeout=TIMEOUT
    )
    try:
        yield world
    finally:
        dist.destroy_process_group()


def active() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (float64); ``values`` itself for one."""
    if not active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (``flag`` for one process)."""
    return all_sum([float(bool(flag))])[0] > 0


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (picklable objects; ``obj`` for one process)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def broadcast_state_(modules: Iterable[nn.Module]) -> None:
    """Copy rank 0's parameters and buffers into every rank's ``modules``, in place."""
    if not active():
        return
    dev = _comm_device()
    with torch.no_grad():
        for module in modules:
            for t in [*module.parameters(), *module.buffers()]:
                buf = t.detach().to(dev)
                dist.broadcast(buf, src=0)
                t.copy_(buf)


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Replace the gradient of each of ``params`` by its mean over the ranks (one
    ``all_reduce``). A parameter without a gradient on some ranks counts as zero there (what
    its gradient over the global batch is); one without a gradient on every rank keeps none,
    so the optimiser skips it as in one process. Every rank must pass the same parameters."""
    params = [p for p in params if p.requires_grad]
    if not active() or not params:
        return
    dev = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=dev)
    grads = [
        p.grad.float() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32)
        for p in params
    ]
    flat = torch.cat([*(g.reshape(-1) for g in grads), has])
    dist.all_reduce(flat)
    flat[: -len(params)] /= dist.get_world_size()
    offset = 0
    for p, used in zip(params, flat[-len(params) :].tolist(), strict=True):
        n = p.numel()
        if used > 0:
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n


def rank_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed of ``(seed, rank, step)``: each rank's own random stream (diffusion
    timesteps and noise) from the training position ``step``."""
    state = np.random.SeedSequence([seed % 2**64, rank, step, 15]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


@contextlib.contextmanager
def entered_on_main(
    world: World, make: Callable[[], AbstractContextManager[Any]]
) -> Iterator[None]:
    """Enter the context manager ``make()`` (e.g. the run directory's lock) on rank 0 only;
    the other ranks wait until it is entered, and raise ``ValueError`` when rank 0 could not
    enter it (rank 0 reports why)."""
    if not world.distributed:
        with make():
            yield
        return
    if not world.is_main:
        if any_rank(False):
            raise ValueError("rank 0 could not start the run (its error says why)")
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(make())
        except BaseException:
            any_rank(True)
            raise
        any_rank(False)
        yield


# ----------------------------------------------------------------------------- BatchNorm
class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks, differentiable: the gradient of every rank's input is the sum of
    the ranks' output gradients (each rank's loss depends on every rank's input)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        out = grad.contiguous().clone()
        dist.all_reduce(out)
        return out


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the global batch (all ranks);
    ``nn.BatchNorm2d`` itself in eval mode or without a process group. Two passes (mean, then
    the centred sum of squares), in float32; running statistics updated as torch does (the
    unbiased variance, ``momentum`` or the cumulative average when it is None)."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and active()):
            return super().forward(x)
        self._check_input_dim(x)
        xf = x.float()
        c = xf.shape[1]
        count = xf.new_tensor([xf.numel() / c])
        sums = _AllReduceSum.apply(torch.cat([xf.sum((0, 2, 3)), count]))
        n = sums[-1].detach()
        mean = sums[:c] / n
        centred = xf - mean.view(1, c, 1, 1)
        var = _AllReduceSum.apply((centred * centred).sum((0, 2, 3))) / n
        if self.track_running_stats and self.running_mean is not None:
            self._update_running(mean.detach(), var.detach(), float(n))
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor, n: float) -> None:
        self.num_batches_tracked.add_(1)
        factor = self.momentum
        if factor is None:
            factor = 1.0 / float(self.num_batches_tracked)
        unbiased = var * (n / max(n - 1.0, 1.0))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


def sync_batchnorm_(module: nn.Module) -> int:
    """Turn every ``nn.BatchNorm2d`` of ``module`` into a :class:`SyncBatchNorm2d` in place
    (same parameters, buffers and state-dict keys, so optimisers and checkpoints are not
    affected); the number converted."""
    n = 0
    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = SyncBatchNorm2d
            n += 1
    return n
