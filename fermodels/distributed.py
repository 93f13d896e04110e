"""torchrun/DDP set-up from the environment, the collectives training and evaluation use, losses
over the whole step's batch (:class:`GlobalBatch`), and the model made ready for the ranks
(:func:`sync_batchnorm`, :func:`ddp_wrap`). How an epoch is split between the ranks is planned in
:mod:`fermodels.epochplan`.

Launch: ``torchrun --nproc_per_node=N -m pipeline.train ...`` (one node) or with ``--nnodes``,
``--node_rank`` and ``--master_addr``/``--master_port`` on several; the process group is set up from
torchrun's environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``).
A rank that stops answering (alive, but stuck) holds the others at their next collective for
torch's default timeout (10 minutes with NCCL, 30 with gloo); ``FER_DIST_TIMEOUT_S`` sets it.
"""
from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ferdata.errors import is_user_error

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job (rank 0 of 1 outside torchrun)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and metrics."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_from_os() -> DistEnv:
    """Rank and world size as torchrun sets them; a plain ``python`` run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}; launch with torchrun")
    return DistEnv(rank, world, int(os.environ.get("LOCAL_RANK", "0")))


def device_name_ok(name: Any) -> bool:
    """Whether ``name`` is a device :func:`pick_device` can read (auto, cpu, cuda or cuda:N), present
    or not: params sections check it when read, before any stage runs."""
    if name == "auto":
        return True
    if not isinstance(name, str):
        return False
    try:
        return torch.device(name).type in ("cpu", "cuda")
    except (RuntimeError, TypeError):
        return False


DEVICE_RULE = (device_name_ok, "auto, cpu, cuda or cuda:N")


def pick_device(name: str, env: DistEnv) -> torch.device:
    """``auto`` = this rank's GPU when CUDA is present, else CPU; ``cuda`` = ``cuda:LOCAL_RANK``;
    ``cpu`` or ``cuda:N``. A GPU that is not there is refused here, in words, not by the first
    tensor moved to it."""
    if not device_name_ok(name):
        raise ValueError(f"device {name!r}: expected {DEVICE_RULE[1]}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device("cuda", env.local_rank) if name == "cuda" else torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {name!r}: no CUDA device is visible here (torch.cuda.is_available() is "
                             "False); use auto or cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r}: cuda:{device.index} does not exist, {count} CUDA device(s) are "
                             "visible (LOCAL_RANK picks the GPU under torchrun)")
    return device


TIMEOUT_ENV = "FER_DIST_TIMEOUT_S"


def collective_timeout() -> timedelta | None:
    """How long a collective waits for a rank that does not arrive: ``FER_DIST_TIMEOUT_S`` seconds,
    or None (torch's default: 10 minutes with NCCL, 30 with gloo)."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or not raw.strip():          # unset or set empty (FER_DIST_TIMEOUT_S= ...): the default
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds above 0 (e.g. 300)")
    return timedelta(seconds=seconds)


def init_distributed(device: torch.device, env: DistEnv, store: dist.Store | None = None) -> bool:
    """Join the process group (NCCL on CUDA, gloo on CPU) with :func:`collective_timeout`; True if
    this call created it. ``store``: the rendezvous store :func:`start_ranks` met the others in."""
    if not env.distributed or dist.is_initialized():
        return False
    if device.type == "cuda":
        # every rank on one GPU fails at NCCL's first step ("duplicate GPU"); a launcher that shows each
        # rank only its own GPU (fewer visible than LOCAL_RANK) makes cuda:0 right
        if device.index != env.local_rank and torch.cuda.device_count() > env.local_rank:
            raise ValueError(f"device cuda:{device.index} under torchrun: each rank takes the GPU of its "
                             f"LOCAL_RANK (this one cuda:{env.local_rank}); set the device to cuda or auto, and "
                             "choose GPUs with CUDA_VISIBLE_DEVICES")
        torch.cuda.set_device(device)
    joined = {} if store is None else {"store": store, "rank": env.rank, "world_size": env.world_size}
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=collective_timeout(),
                            device_id=device if device.type == "cuda" else None, **joined)
    return True


class RankRefusal(RuntimeError, ValueError):
    """Another rank's account of a rank's refusal of bad input (a ``ValueError``: one ``error:`` line)."""


def told(err: BaseException | None) -> list | None:
    """A rank's failure as it tells the other ranks: ["Type: message", whether it is bad input (one ``error:``
    line, not a bug)], or None."""
    if err is None:
        return None
    return [f"{type(err).__name__}: {err}", isinstance(err, SystemExit) or is_user_error(err)]


def stop_for_others(told_by_rank: Sequence[list | None], when: str) -> None:
    """Raise the first failure another rank told (:func:`told`): :class:`RankRefusal` for bad input, else
    ``RuntimeError`` (a bug), naming the rank and ``when`` it stopped."""
    for rank, said in enumerate(told_by_rank):
        if said is not None:
            raise (RankRefusal if said[1] else RuntimeError)(f"rank {rank} stopped {when}: {said[0]}")


def on_every_rank(fn: Callable[[], Any], env: DistEnv) -> Any:
    """``fn()`` on every rank (what each machine checks of its own, as its shards against the selection
    file); when it raises on any rank, every rank stops: that rank with its error, the others with
    :class:`RankRefusal` (``RuntimeError`` for a bug) naming it
    (:func:`stop_for_others`). Run in the process group, as the model is built: a
    weight file one machine lacks stopped its ranks alone, the others ending on gloo's "Connection closed by
    peer" (NCCL: the timeout)."""
    value, refusal = None, None
    try:
        value = fn()
    except Exception as err:       # noqa: BLE001 - any failure here must reach every rank
        refusal = err
    said = all_gather_objects(told(refusal), env)
    if refusal is not None:
        raise refusal
    stop_for_others(said, "before training")
    return value


START = "fermodels/start"       # the rendezvous store's keys of :func:`start_ranks`


def start_ranks(prepare: Callable[[], tuple[T, torch.device]],
                env: DistEnv | None = None) -> tuple[T, torch.device, bool]:
    """``prepare()`` (what a rank does before it can join the process group: read and check its own
    params.yaml, pick its device), then the group joined on the device it returns (:func:`init_distributed`;
    the bool: whether this call created the group; ``env``: torchrun's by default). Under torchrun every
    rank first tells the others, through the rendezvous store, whether ``prepare`` failed and the kind of
    device it picked: a rank that failed alone (one machine's params.yaml, a GPU asked for where none is)
    stops every rank with its reason, where the other machines' ranks waited in init_process_group for
    the timeout (30 minutes) and ended on a store timeout that named nothing; ranks on CPUs and GPUs at
    once are refused (gloo and NCCL do not meet). A rank that died after torchrun started it, before it could
    tell why, is named after the timeout (a machine never launched is waited for by torchrun's own rendezvous)."""
    value, device, failure = None, None, None
    try:
        value, device = prepare()
    except (Exception, SystemExit) as err:      # noqa: BLE001 - any failure here must reach every rank
        failure = err
    env = env or env_from_os()           # after prepare: its command-line error policy is set up
    if not env.distributed or dist.is_initialized():
        if failure is not None:
            raise failure
        return value, device, False
    try:
        timeout = collective_timeout() or dist.default_pg_timeout
    except ValueError as err:
        failure, timeout = failure or err, dist.default_pg_timeout
    try:
        store, _, _ = next(dist.rendezvous("env://", env.rank, env.world_size, timeout=timeout))
    except (dist.DistStoreError, dist.DistNetworkError):
        if failure is not None:         # its own reason, not the store's
            raise failure from None
        raise
    said, kinds, group_store = _tell_start(store, env, failure, device, timeout)
    if failure is not None:
        raise failure
    stop_for_others(said, "before joining the others")
    if len(set(kinds)) > 1:
        ranks = "; ".join(f"{kind}: rank(s) {', '.join(str(r) for r, k in enumerate(kinds) if k == kind)}"
                          for kind in sorted(set(kinds)))
        raise ValueError(f"the ranks picked different kinds of device ({ranks}): gloo (CPU) and NCCL (GPU) ranks "
                         "cannot train together; a machine with no visible GPU picks the CPU under device auto: "
                         "give every machine its GPUs (CUDA_VISIBLE_DEVICES), or set train.device cuda to be told "
                         "which has none")
    return value, device, init_distributed(device, env, group_store)


def _tell_start(store: dist.Store, env: DistEnv, failure: BaseException | None, device: torch.device | None,
                timeout: timedelta) -> tuple[list[list | None], list[str | None], dist.Store]:
    """Every rank's failure (:func:`told`) and device type, in rank order, through ``store``, and the store the
    process group is to use: this meeting's own namespace of ``store``.

    torchrun's agent keeps its store across restarts, and a c10d agent restarted for another machine's
    membership change counts no restart, so TORCHELASTIC_RESTART_COUNT differs between the machines and
    cannot name a meeting. The ranks' keys are deleted instead as soon as every rank has read them, and
    rank 0 draws a token naming the rest: the meeting's counters and the process group's keys (gloo's own,
    left from the last attempt, sent a restarted rank to a dead address). Every rank leaves only once all
    have read: the agent hosting the store ends as soon as one of its ranks stops on a refusal."""
    keys = dist.PrefixStore(START, store)
    token = uuid.uuid4().hex if env.rank == 0 else None
    keys.set(str(env.rank), json.dumps([told(failure), None if device is None else device.type, token]))
    ranks = [str(r) for r in range(env.world_size)]
    try:
        keys.wait(ranks, timeout)
    except (dist.DistStoreError, RuntimeError):
        missing = [r for r in ranks if not keys.check([r])]
        try:                            # not read by a later attempt as this one's
            keys.delete_key(str(env.rank))
        except (dist.DistStoreError, RuntimeError):
            pass
        if failure is not None:
            raise failure from None
        raise TimeoutError(f"rank(s) {', '.join(missing)} did not start within {timeout.total_seconds():g} s "
                           f"(stopped before it could tell why: see its machine's log); {TIMEOUT_ENV} sets the "
                           "wait") from None
    words = [json.loads(keys.get(r)) for r in ranks]
    meeting = words[0][2]
    if keys.add(f"read/{meeting}", 1) == env.world_size:     # every rank has read: a restart finds none of it
        for r in ranks:
            keys.delete_key(r)
        keys.set(f"all_read/{meeting}", "1")
    try:
        keys.wait([f"all_read/{meeting}"], timeout)
    except (dist.DistStoreError, RuntimeError):
        pass
    return [w[0] for w in words], [w[1] for w in words], dist.PrefixStore(f"{START}/group/{meeting}", store)


def shutdown(created: bool) -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    if created and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj``, in rank order (just ``[obj]`` outside DDP)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(module: torch.nn.Module, env: DistEnv) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP copies them only at
    the start of a training forward, so after an epoch's last step each rank's hold its own last
    batch; evaluating then would score each rank's share with a slightly different model."""
    if env.distributed:
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def max_over_ranks(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """The largest of every rank's ``value`` (every rank must call it at the same point)."""
    if not env.distributed:
        return value
    out = value.clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


class LauncherGoneError(RuntimeError, ValueError):
    """torchrun, which started this rank, is gone: every rank stops together, each with one error line
    (a ValueError under the commands' error policy: an expected stop, not a bug's traceback)."""


@dataclass(frozen=True)
class LauncherWatch:
    """Whether torchrun's agent, this rank's parent, still runs. torchrun starts each rank in a
    session of its own, so a SIGKILL to torchrun (which it cannot pass on) or to its process group
    left the ranks training unsupervised, holding the run against a relaunch. ``pid`` None: not
    started by torchrun (a plain run goes on when its parent ends, as any program)."""

    pid: int | None = None

    @staticmethod
    def here() -> LauncherWatch:
        return LauncherWatch(os.getppid() if os.environ.get("TORCHELASTIC_RUN_ID") else None)

    def gone(self) -> bool:
        return self.pid is not None and os.getppid() != self.pid

    def check(self, gone: torch.Tensor) -> None:
        """Raise when any rank found the launcher gone (``gone``: :func:`max_over_ranks` of each
        rank's :meth:`gone`, so the ranks stop at the same step, none left in a collective)."""
        if float(gone) > 0:
            raise LauncherGoneError(f"torchrun (pid {self.pid}), which started the ranks, is gone (killed?): every "
                                    "rank stops here; launch it again to resume from last.pt")


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


@dataclass(frozen=True)
class GlobalBatch:
    """A loss over the whole step's batch under DDP, not each rank's share (NeAA's anchors and
    neutral pairs): its value and gradient are one process's over that batch, however many GPUs
    share it (the rest of the step, per-rank means and the sample order, is not made so).

    ``capacity`` is the per-rank batch size (no rank's batch is larger): every rank pads its rows to
    it, so one fixed-size gather serves any uneven last batch without a size exchange or a host
    sync. Each rank computes the loss on the gathered rows, its own with their graph and the
    others' as constants, so it differentiates only through its own samples; DDP then averages the
    parameter gradients over the ranks. :meth:`loss` therefore scales the gradient (not the value)
    by the world size: the average of ``W * dL/df_r * df_r/dtheta`` over the ranks is the
    single-process gradient of ``L`` over the global batch. No collective runs in the backward pass.
    """

    world_size: int
    rank: int
    capacity: int

    def gather(self, *rows: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every rank's ``rows`` (tensors of equal length B <= capacity) in rank order, each rank's
        padded with zeros to ``capacity``, and the mask of real rows. One all_gather of float32 (the
        values of integer tensors must be exact in float32: labels, counts)."""
        n = rows[0].shape[0]
        if n > self.capacity or any(r.shape[0] != n for r in rows):
            raise ValueError(f"rows of lengths {[r.shape[0] for r in rows]} for a capacity of {self.capacity}")
        flat = [r.detach().reshape(n, math.prod(r.shape[1:])).float() for r in rows]
        widths = [f.shape[1] for f in flat]
        local = rows[0].new_zeros((self.capacity, sum(widths) + 1), dtype=torch.float32)
        local[:n] = torch.cat([*flat, local.new_ones((n, 1))], 1)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        columns = [part.split([*widths, 1], 1) for part in parts]
        out = []
        for i, r in enumerate(rows):
            own = torch.cat([r, r.new_zeros((self.capacity - n, *r.shape[1:]))])
            out.append(torch.cat([own if k == self.rank else cols[i].to(r.dtype).reshape(own.shape)
                                  for k, cols in enumerate(columns)]))
        return out, torch.cat([cols[-1].flatten() > 0 for cols in columns])

    def mean_over_ranks(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``x`` over the ranks, as a constant (one all_reduce). A weighted loss's sum on
        each rank divided by the mean of the ranks' weight sums is that rank's share of the weighted
        mean over the global batch, and DDP's average of the ranks' gradients is its gradient (each
        rank dividing by its own weight sum weighted a rare class by the rank's share instead)."""
        total = x.detach().float().clone()
        dist.all_reduce(total)
        return total / self.world_size

    def loss(self, fn: Callable[..., torch.Tensor], *rows: torch.Tensor) -> torch.Tensor:
        """``fn(*gathered_rows, valid=mask)``: its value over the global batch, its gradient scaled
        as the class docstring says."""
        gathered, valid = self.gather(*rows)
        value = fn(*gathered, valid=valid)
        return value * self.world_size - (value * (self.world_size - 1)).detach()


def sync_batchnorm(net: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """``net`` with its BatchNorm layers computing statistics over every rank's samples (torch's
    SyncBatchNorm, GPU only; the same parameters and buffers, so optimiser, checkpoints and the
    weight average are unchanged); a single process is left as it is."""
    if not env.distributed:
        return net
    if device.type != "cuda":
        raise ValueError("train.sync_batchnorm needs CUDA ranks (torch's SyncBatchNorm runs on GPUs only): set it "
                         "false on CPUs")
    return nn.SyncBatchNorm.convert_sync_batchnorm(net)


def check_compile_works(device: torch.device) -> None:
    """Refuse ``train.compile`` in words where torch.compile cannot build kernels on ``device`` (no
    working C++ compiler for inductor's CPU kernels, no triton on a GPU): compiled lazily, the model
    failed at the first training step, after the data was set up, on a 100-line inductor traceback."""
    def probe(x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 + 1.0

    try:
        torch.compile(probe, dynamic=False)(torch.ones(8, device=device))
    except Exception as err:     # noqa: BLE001 - inductor raises many kinds (InductorError, BackendCompilerFailed)
        text = str(err).strip()
        first = text.splitlines()[0] if text else type(err).__name__
        raise ValueError(f"train.compile: torch.compile cannot build kernels on {device.type} here ({first}); "
                         "install what it names (a C++ compiler such as g++ for the CPU, triton for a GPU) "
                         "or set train.compile false") from None


def ddp_wrap(net: nn.Module, env: DistEnv, device: torch.device, num_classes: int, compile: bool) -> nn.Module:
    """The module the training loop calls: DDP around ``net`` under torchrun (told to look for unused
    parameters only where a forward pass leaves some unused), compiled if asked."""
    fwd: nn.Module = net
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel
        from fermodels.examples import example_batch

        was_training = net.training
        example = {k: v.to(device) for k, v in example_batch(net.card, 2, num_classes).items()}
        trained = [p for p in net.parameters() if p.requires_grad]
        # by gradient, not by the modules called: a module called whose output reaches no loss (or a
        # parameter used directly, outside any submodule's forward) gets no gradient all the same
        net.eval()                              # no BatchNorm statistics moved, no dropout drawn
        try:
            loss = sum(net.losses(net(example), example).values())
            grads = torch.autograd.grad(loss, trained, allow_unused=True)
        finally:
            net.train(was_training)
        unused = any(g is None for g in grads)
        fwd = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=unused)
    return torch.compile(fwd) if compile else fwd
