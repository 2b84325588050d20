"""Training on several processes with ``torch.distributed``: the pieces that make N processes train as one (chapter 9).

``torchrun`` starts one process per GPU (or several on a CPU) and tells each its rank through environment
variables; :meth:`World.from_env` reads them and joins the process group (NCCL on GPUs, gloo on CPUs). Each
process then trains on its own shard of every global batch, and everything that would make the processes drift
apart is done here, once:

* *gradients* - :meth:`World.wrap` puts the model in ``DistributedDataParallel``, which averages the gradients
  over the processes in the backward pass, so every process takes the same optimizer step;
* *BatchNorm* - :func:`convert_batchnorm` normalises with the statistics of the whole global batch
  (``nn.SyncBatchNorm`` on GPUs; :class:`GatheredBatchNorm2d` on CPUs, where SyncBatchNorm does not run);
* *data* - :func:`train_sampler` deals every process its share of one shuffled order per epoch
  (``DistributedSampler``, seeded by the recipe's seed plus the epoch), and :class:`ShardSampler` splits the
  validation set without repeating images, so the counts of all shards add up to the exact score;
* *quantizers* - the first batch a quantizer sees sets its clip (reference mode) and calibration picks clips
  from batches (fixed mode): :func:`gather_first_use` and :meth:`World.gather_batch` give every process the
  *whole* global batch for that, in the order one process would have seen it (:func:`interleave`);
* *AIWQ* - the tracker adds up the per-channel sums of all processes (``AIWQTracker(distributed="batch")``), so
  every process ranks, and freezes, the same layers.

With these, N processes with a global batch B compute what one process with batch B computes, up to the order of
floating-point sums (the tests check this on the CPU with 2 gloo processes). A ``World`` of size 1 (no torchrun)
does nothing at all: every method is the identity.

Glossary: *rank* r, the index of a process (0 is the *main* process, which writes files); *world size* W, the
number of processes; *local rank*, the index of a process on its machine (its GPU).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DistributedSampler, Sampler

from .layers import QAct, quantizers

__all__ = ["GatheredBatchNorm2d", "ShardSampler", "World", "convert_batchnorm", "gather_first_use", "interleave",
           "train_sampler"]

log = logging.getLogger(__name__)

#: The environment variables torchrun sets for every process.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def interleave(parts: list[Tensor]) -> Tensor:
    """The batches of W processes as one batch, in the order one process would have had it.

    A ``DistributedSampler`` deals the global order round-robin: sample i of rank r is global sample i W + r.
    Stacking the ranks' batches along a new second dim and flattening the first two dims undoes that.

    Shapes: W tensors (b, ...) -> (W b, ...)

    >>> interleave([torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5])]).tolist()
    [0, 1, 2, 3, 4, 5]
    """
    stacked = torch.stack(parts, dim=1)  # (b, W, ...)
    return stacked.reshape(-1, *stacked.shape[2:])


# --------------------------------------------------------------------------------------------
# The processes
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run, and the few collective operations training needs.

    Attributes:
        rank: this process's index, 0..size-1; rank 0 is the main process (it writes files, logs and shows bars).
        size: the number of processes W.
        local_rank: its index on this machine (which GPU it uses).
        device: where it trains: ``"cuda:<local_rank>"`` or ``"cpu"``.
        bn_synced: whether BatchNorm runs over the global batch (:func:`convert_batchnorm`); when not, each
            process normalises its own share and :meth:`wrap` copies the main process's running statistics to the
            others at every step (as DataParallel's replicas had GPU 0's).

    >>> World().is_main, World().gather_batch(torch.ones(2)).tolist()
    (True, [1.0, 1.0])
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    bn_synced: bool = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str | None = None, *, timeout_s: float = 1800.0) -> World:
        """Join the process group that ``torchrun`` set up (``RANK``, ``WORLD_SIZE``, ... in the environment).

        Without those variables, or with ``WORLD_SIZE=1``, this is a single process and nothing is initialised.
        ``device``: ``"cuda"`` (one GPU per process, by local rank; NCCL), ``"cpu"`` (gloo), or None for CUDA
        when present.

        Raises:
            ValueError: an unknown device, CUDA asked for but absent, or fewer GPUs than processes on this machine.
        """
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if kind not in ("cuda", "cpu"):
            raise ValueError(f"device must be 'cuda' or 'cpu' (each process takes the GPU of its local rank), "
                             f"got {device!r}")
        if kind == "cuda":
            if not torch.cuda.is_available():
                raise ValueError("device 'cuda' was asked for, but this machine has no CUDA GPU; use --device cpu")
            if local >= torch.cuda.device_count():
                raise ValueError(f"local rank {local} needs GPU {local}, but this machine has "
                                 f"{torch.cuda.device_count()}: start at most that many processes per node")
            torch.cuda.set_device(local)
        world = cls(rank, size, local, f"cuda:{local}" if kind == "cuda" else "cpu")
        if size > 1 and not dist.is_initialized():
            from datetime import timedelta

            timeout = timedelta(seconds=timeout_s)
            store, rank, size = next(dist.rendezvous("env://", timeout=timeout))
            # torchrun keeps its store across restarts: keys of each attempt apart, or a process may read the
            # address a dead process of the last attempt published and fail to connect
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            dist.init_process_group("nccl" if kind == "cuda" else "gloo", store=dist.PrefixStore(
                f"profit_edu/attempt_{attempt}", store), rank=rank, world_size=size, timeout=timeout)
            log.info("process %d of %d joined (%s)", rank, size, dist.get_backend())
        return world

    def close(self) -> None:
        """Leave the process group (when one was joined)."""
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    # -- collectives (each is the identity for a single process) ----------------------------------
    def barrier(self) -> None:
        """Wait until every process got here (e.g. until the main process has written a file)."""
        if self.size > 1:
            dist.barrier()

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """``t`` summed over the processes (a new tensor; ``t`` is left as it was)."""
        if self.size == 1:
            return t.clone()
        t = t.clone()
        dist.all_reduce(t)
        return t

    def gather_batch(self, x: Tensor) -> Tensor:
        """Every process's batch ``x`` (all of one shape) as the global batch, in one process's order
        (:func:`interleave`), on every process."""
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous())
        return interleave(parts)

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy the main process's parameters and buffers into every process's ``module``, in place."""
        if self.size == 1:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)

    def gather_rng(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every other process's generator states ``{device: uint8 state}``, as the checkpoint extras
        ``rng.rank<r>.<device>`` that :meth:`local_rng` reads back (on the main process; ``{}`` elsewhere).
        Every process must call it."""
        if self.size == 1:
            return {}
        states: list[dict[str, Tensor] | None] = [None] * self.size
        dist.all_gather_object(states, {k: v.cpu() for k, v in state.items()})
        if not self.is_main:
            return {}
        return {f"rng.rank{r}.{k}": v for r, s in enumerate(states) if r > 0 and s for k, v in s.items()}

    def local_rng(self, rng: dict[str, Tensor], extra: dict[str, Tensor]) -> dict[str, Tensor]:
        """This process's generator states in a checkpoint: ``rng`` for the main process, its extras for the
        others (none when the run had fewer processes: then dropout draws differ from an uninterrupted run)."""
        if self.is_main:
            return rng
        prefix = f"rng.rank{self.rank}."
        mine = {k.removeprefix(prefix): v for k, v in extra.items() if k.startswith(prefix)}
        if not mine:
            log.warning("the checkpoint holds no generator state for rank %d (written by fewer processes?): "
                        "its dropout continues from the main process's state", self.rank)
            return rng
        return mine

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in ``DistributedDataParallel`` (the module to run training steps through), or ``model``
        itself for one process.

        ``find_unused_parameters`` when some quantizer is off: its ``a`` and ``c`` get no gradient. Buffers are
        copied from the main process at every step only without ``bn_synced`` (otherwise they agree already).
        """
        if self.size == 1:
            return model
        import inspect

        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.local_rank] if self.device.startswith("cuda") else None
        unused = any(p.requires_grad for _, q in quantizers(model) if q.bits is None for p in q.parameters())
        sync = not self.bn_synced
        buffers = {"forward_sync_buffers": sync} if "forward_sync_buffers" in inspect.signature(DDP).parameters \
            else {"broadcast_buffers": sync}  # the name before torch 2.14
        return DDP(model, device_ids=ids, find_unused_parameters=unused, **buffers)


# --------------------------------------------------------------------------------------------
# BatchNorm over the global batch
# --------------------------------------------------------------------------------------------
class _GatherRows(torch.autograd.Function):
    """The global batch from every process's rows (:func:`interleave`), differentiably: the backward pass adds up
    the gradients of all processes and hands each process those of its own rows (sample i of rank r is row
    i W + r)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return interleave(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[dist.get_rank():: dist.get_world_size()]


class GatheredBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the global batch for CPU processes (gloo), where ``nn.SyncBatchNorm`` does not run.

    In a training step (train mode, autograd on) every process gathers the whole global batch, normalises it
    exactly as one process would (the same ``F.batch_norm`` on the same tensor, so the output and the running
    statistics are bit for bit one process's), and keeps its own rows. The gather is differentiable: the
    backward pass sends each process's gradient back to the process whose rows it concerns. It costs W times
    the BatchNorm work, which is why GPUs use ``nn.SyncBatchNorm`` (which exchanges only per-channel sums).
    Everywhere else (evaluation, calibration under ``torch.no_grad``, one process) it is an ordinary
    ``nn.BatchNorm2d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        syncing = (self.training and torch.is_grad_enabled() and dist.is_available() and dist.is_initialized()
                   and dist.get_world_size() > 1 and not isinstance(x, torch.fx.Proxy))
        if not syncing:
            return super().forward(x)
        y = super().forward(_GatherRows.apply(x))
        return y[dist.get_rank():: dist.get_world_size()]


def convert_batchnorm(model: nn.Module, device: str) -> nn.Module:
    """Make every ``BatchNorm2d`` of ``model`` normalise over the global batch; returns the model (in place for the
    CPU). ``nn.SyncBatchNorm`` on CUDA, :class:`GatheredBatchNorm2d` on the CPU; the state dict keeps its keys, so
    checkpoints load into the plain model."""
    if device.startswith("cuda"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, m in list(model.named_modules()):
        if type(m) is nn.BatchNorm2d:
            like = next(iter(m.state_dict().values()), torch.empty(0))  # its device and dtype
            new = GatheredBatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                                      device=like.device, dtype=like.dtype if like.is_floating_point() else None)
            new.load_state_dict(m.state_dict())
            new.train(m.training)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model


# --------------------------------------------------------------------------------------------
# Quantizers that initialise from their first batch
# --------------------------------------------------------------------------------------------
def gather_first_use(model: nn.Module, world: World) -> list[torch.utils.hooks.RemovableHandle]:
    """Let every activation quantizer that initialises itself from its first batch see the *global* batch.

    A forward pre-hook on each :class:`~profit_edu.layers.QAct` gathers its input from all processes
    (:meth:`World.gather_batch`) the first time its quantizer is on and not yet initialised, and initialises it
    from that (:meth:`QAct.init_quantizer`), so every process gets the clip one process would. Afterwards the
    hook only checks a flag. Returns the hook handles (``handle.remove()`` takes them off).
    """

    def hook(module: QAct, inputs: tuple[Tensor, ...]) -> None:
        q = module.quantizer
        if q.bits is not None and not q._ready:
            with torch.no_grad():
                module.init_quantizer(world.gather_batch(inputs[0].detach()))

    if world.size == 1:
        return []
    return [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, QAct)]


# --------------------------------------------------------------------------------------------
# Who reads which images
# --------------------------------------------------------------------------------------------
def train_sampler(n: int, world: World, *, seed: int) -> DistributedSampler:
    """The training order: one permutation of the ``n`` images per epoch (seeded by ``seed + epoch``; call
    ``set_epoch``), dealt round-robin to the processes, the tail that does not fill every process dropped.

    The permutation does not depend on the number of processes, so W processes with batch B / W see the batches
    one process with batch B would (:func:`interleave` puts their order back).
    """
    return DistributedSampler(range(n), num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed,
                              drop_last=True)


class ShardSampler(Sampler[int]):
    """Images ``rank, rank + W, rank + 2W, ...`` of ``n``: every image once over all processes, none repeated
    (``DistributedSampler`` pads with repeats, which would count some validation images twice).

    >>> list(ShardSampler(5, World(rank=1, size=2)))
    [1, 3]
    """

    def __init__(self, n: int, world: World) -> None:
        self.n, self.world = n, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.world.rank, self.n, self.world.size))

    def __len__(self) -> int:
        return len(range(self.world.rank, self.n, self.world.size))
