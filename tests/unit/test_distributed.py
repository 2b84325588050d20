"""profit_edu.distributed: N processes compute what one process with the global batch computes.

The pure pieces (interleaving, samplers, a World of one) are checked in this process; the collective ones in two
gloo processes on the CPU (one spawn for all of them), each against a single-process oracle computed on the
whole global batch inside the same child.
"""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from profit_edu import quantize_model
from profit_edu.aiwq import AIWQTracker
from profit_edu.distributed import (
    GatheredBatchNorm2d,
    ShardSampler,
    World,
    convert_batchnorm,
    gather_first_use,
    interleave,
    train_sampler,
)
from profit_edu.train import evaluate


def test_interleave_undoes_round_robin_dealing():
    order = torch.arange(12)
    parts = [order[r::3] for r in range(3)]  # what DistributedSampler gives 3 processes
    assert torch.equal(interleave(parts), order)
    assert interleave([torch.zeros(2, 3, 4), torch.ones(2, 3, 4)]).shape == (4, 3, 4)


@pytest.mark.parametrize("size", [2, 4])
def test_train_sampler_deals_one_order_whatever_the_world_size(size):
    one = train_sampler(40, World(), seed=5)
    one.set_epoch(3)
    shards = []
    for r in range(size):
        s = train_sampler(40, World(rank=r, size=size), seed=5)
        s.set_epoch(3)
        shards.append(torch.tensor(list(s)))
    assert torch.equal(interleave(shards), torch.tensor(list(one)))
    again = train_sampler(40, World(), seed=5)
    again.set_epoch(4)
    assert list(again) != list(one)  # a new order every epoch


def test_shard_sampler_covers_every_image_once():
    shards = [list(ShardSampler(11, World(rank=r, size=3))) for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(11))
    assert [len(ShardSampler(11, World(rank=r, size=3))) for r in range(3)] == [4, 4, 3]


def test_a_world_of_one_changes_nothing():
    w = World()
    model = nn.Linear(2, 2)
    x = torch.randn(3, 2)
    assert w.wrap(model) is model and w.gather_batch(x) is x
    assert torch.equal(w.all_reduce_sum(x), x) and w.gather_rng({"cpu": torch.get_rng_state()}) == {}
    assert gather_first_use(model, w) == []
    w.barrier()


def test_world_from_env_without_torchrun_is_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert World.from_env("cpu") == World()
    with pytest.raises(ValueError, match="'cuda' or 'cpu'"):
        World.from_env("tpu")


def test_convert_batchnorm_keeps_the_state_dict():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    net[1].running_mean.fill_(0.5)
    before = copy.deepcopy(net.state_dict())
    convert_batchnorm(net, "cpu")
    assert type(net[1]) is GatheredBatchNorm2d and isinstance(net[1], nn.BatchNorm2d)
    assert net.state_dict().keys() == before.keys()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())


# --------------------------------------------------------------------------------------------
# Two gloo processes
# --------------------------------------------------------------------------------------------
def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU6(),
                         nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.BatchNorm2d(6), nn.ReLU6(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))


def _check_steps(world: World, x: torch.Tensor, y: torch.Tensor) -> None:
    """DDP + GatheredBatchNorm2d: three SGD steps on shards == three steps on the whole batch."""
    torch.manual_seed(0)
    ref = _net()
    model = convert_batchnorm(copy.deepcopy(ref), "cpu")
    step = world.wrap(model)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mine = slice(world.rank, None, 2)
    for _ in range(3):
        for run, optimizer, xs, ys in ((ref, opt_ref, x, y), (step, opt, x[mine], y[mine])):
            optimizer.zero_grad()
            F.cross_entropy(run(xs), ys).backward()
            optimizer.step()
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def _check_first_use_and_evaluate(world: World, x: torch.Tensor, y: torch.Tensor) -> None:
    """A quantizer initialised from its first batch sees the global batch; sharded scores add up exactly."""
    torch.manual_seed(1)
    ref = quantize_model(_net(), 4, 4, init_style="reference")
    model = convert_batchnorm(copy.deepcopy(ref), "cpu")  # the quantizers' inputs: BN over the global batch
    gather_first_use(model, world)
    ref.train()(x)
    model.train()(x[world.rank::2])
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        if "quant" in name:
            torch.testing.assert_close(a, b, msg=name)
    shard = [(x[i::4], y[i::4]) for i in range(world.rank, 4, 2)]
    whole = evaluate(ref, [(x, y)])
    combined = evaluate(ref, shard, reduce=world.all_reduce_sum)
    assert combined["top1"] == whole["top1"] and combined["top5"] == whole["top5"]
    assert combined["loss"] == pytest.approx(whole["loss"], rel=1e-6)


def _check_aiwq(world: World, x: torch.Tensor) -> None:
    """AIWQTracker(distributed="batch") on shards == one tracker on the whole batch, step by step."""
    torch.manual_seed(2)
    ref = quantize_model(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3)), 4, 4)
    ref.train()(x)  # quantizers initialise
    model = convert_batchnorm(copy.deepcopy(ref), "cpu")
    trackers = AIWQTracker(ref, ema=0.5), AIWQTracker(model, ema=0.5, distributed="batch")
    gen = torch.Generator().manual_seed(3)
    for step in range(4):
        noise = [0.05 * torch.randn(p.shape, generator=gen) for p in ref.parameters()]
        for net in (ref, model):
            with torch.no_grad():
                for p, n in zip(net.parameters(), noise):
                    p.add_(n)  # the same "optimizer step" on both
        ref(x + step)
        model((x + step)[world.rank::2])
    values = [t.values() for t in trackers]
    assert values[0].keys() == values[1].keys() and any(v > 0 for v in values[0].values())
    for name in values[0]:
        assert values[1][name] == pytest.approx(values[0][name], rel=1e-6), (name, values)


def _body(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    world = World.from_env("cpu")
    try:
        assert (world.rank, world.size, world.device) == (rank, 2, "cpu")
        assert torch.equal(world.gather_batch(torch.arange(3) * 2 + rank), torch.arange(6))
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(8, 3, 6, 6, generator=gen), torch.randint(0, 5, (8,), generator=gen)
        _check_steps(world, x, y)
        _check_first_use_and_evaluate(world, x, y)
        _check_aiwq(world, x)
        torch.manual_seed(rank)
        saved = world.gather_rng({"cpu": torch.get_rng_state()})
        assert sorted(saved) == (["rng.rank1.cpu"] if rank == 0 else [])
        mine = torch.get_rng_state()
        assert torch.equal(world.local_rng({"cpu": mine}, {}) ["cpu"], mine)
    finally:
        world.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_compute_what_one_process_computes():
    mp.spawn(_body, args=(_free_port(),), nprocs=2, join=True)
