"""The process group of a sharded simulation: who we are, read from torchrun or Slurm.

A sharded run is one process per rank, started by ``torchrun`` (which sets
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or by
``srun`` (``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` or ``SLURM_NTASKS``,
``SLURM_LOCALID``; the job script exports ``MASTER_ADDR`` and ``MASTER_PORT``).
The group is ``torch.distributed``'s own: NCCL when the ranks run on GPUs (rank
``LOCAL_RANK`` of a machine on its GPU ``LOCAL_RANK``), gloo on CPUs.

Every rank checks at the start that all of them loaded the same scenario (a
hash of it, gathered from every rank), so a file edited between two nodes'
starts, or a different ``--set``, fails at once with the ranks named.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from p2pfl.errors import ConfigError


@dataclass(frozen=True)
class Placement:
    """Where this process sits in the job, as the launcher's environment says."""

    rank: int
    size: int
    local_rank: int
    launcher: str  # "torchrun" or "slurm"


@dataclass(frozen=True)
class World:
    """An initialised process group: this rank, the world's size, backend and device."""

    rank: int
    size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def leader(self) -> bool:
        """Rank 0 gathers the results and writes them; the others write nothing."""
        return self.rank == 0


def placement(environ: Mapping[str, str]) -> Placement | None:
    """This process's place in a launched job, or None when no launcher started it."""
    if "WORLD_SIZE" in environ and "RANK" in environ:
        return _checked(
            _int(environ, "RANK"),
            _int(environ, "WORLD_SIZE"),
            _int(environ, "LOCAL_RANK", 0),
            "torchrun",
            environ,
        )
    tasks = environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS"))
    if tasks is not None and "SLURM_PROCID" in environ:
        size = _int({"SLURM_NTASKS": tasks}, "SLURM_NTASKS")
        return _checked(
            _int(environ, "SLURM_PROCID"), size, _int(environ, "SLURM_LOCALID", 0), "slurm", environ
        )
    return None


def _int(environ: Mapping[str, str], key: str, default: int | None = None) -> int:
    value = environ.get(key)
    if value is None:
        if default is None:
            raise ConfigError(f"the launcher's environment lacks {key}")
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r} in the environment is not an integer") from None


def _checked(
    rank: int, size: int, local: int, launcher: str, environ: Mapping[str, str]
) -> Placement:
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ConfigError(f"{launcher} placement is inconsistent: rank {rank} of {size}")
    if size > 1:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(k)]
        if missing:
            hint = (
                "; in the job script: export MASTER_ADDR=$(scontrol show hostnames "
                '"$SLURM_JOB_NODELIST" | head -n 1) MASTER_PORT=29500'
                if launcher == "slurm"
                else ""
            )
            raise ConfigError(f"a {size}-rank {launcher} job needs {' and '.join(missing)}{hint}")
    return Placement(rank, size, local, launcher)


def backend_and_device(local_rank: int, device_name: str) -> tuple[str, torch.device]:
    """NCCL on this rank's GPU (``LOCAL_RANK``) where the scenario runs on GPUs, else gloo."""
    wants_cpu = device_name == "cpu"
    if not wants_cpu and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} has no GPU: this machine shows "
                f"{torch.cuda.device_count()}; start at most that many ranks per machine"
            )
        return "nccl", torch.device("cuda", local_rank)
    if device_name.startswith("cuda"):
        raise ConfigError(f"device {device_name!r} asked for, but torch sees no GPU")
    return "gloo", torch.device("cpu")


def join(where: Placement, device_name: str) -> World:
    """Initialise the process group (``env://``: MASTER_ADDR and MASTER_PORT) for this rank."""
    backend, device = backend_and_device(where.local_rank, device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend, init_method="env://", rank=where.rank, world_size=where.size
        )
    return World(where.rank, where.size, where.local_rank, backend, device)


def leave(together: bool = False) -> None:
    """Tear the process group down (every rank calls it at the end).

    ``together`` (a run that ended well on this rank) waits first until every rank
    is here, so no rank tears its connections down, and exits, while another is
    still writing its outputs with the group open: a gloo rank that did so aborted
    at exit now and then ("terminate called without an active exception"). A rank
    leaving on an error does not wait: the others may never come.
    """
    if dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def scenario_digest(table: Mapping[str, Any]) -> bytes:
    """SHA-256 of a scenario's table, keys sorted: equal on two ranks iff they run the same."""
    text = json.dumps(table, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).digest()


def check_same(world: World, digest: bytes, what: str = "scenario") -> None:
    """``ConfigError`` on every rank unless every rank holds the same ``digest``."""
    mine = torch.tensor(list(digest), dtype=torch.uint8, device=world.device)
    everyone = [torch.empty_like(mine) for _ in range(world.size)]
    dist.all_gather(everyone, mine)
    digests = [bytes(t.cpu().tolist()) for t in everyone]
    if len(set(digests)) > 1:
        groups: dict[bytes, list[int]] = {}
        for rank, d in enumerate(digests):
            groups.setdefault(d, []).append(rank)
        listing = "; ".join(f"ranks {ranks} hash {d.hex()[:12]}" for d, ranks in groups.items())
        raise ConfigError(
            f"the ranks did not load the same {what} ({listing}): start every rank "
            "with the same file and the same --set options"
        )


def devices(world: World) -> list[str]:
    """Every rank's ``host/device`` (for the report and the crate), on every rank."""
    import socket

    width = 128
    text = f"{socket.gethostname()}/{world.device}".encode()[:width].ljust(width, b"\0")
    mine = torch.tensor(list(text), dtype=torch.uint8, device=world.device)
    everyone = [torch.empty_like(mine) for _ in range(world.size)]
    dist.all_gather(everyone, mine)
    return [bytes(t.cpu().tolist()).rstrip(b"\0").decode(errors="replace") for t in everyone]
