"""Throughput of secure aggregation's hot path on one core: quantize + mask.

Prints, for a model of ``--params`` float32 parameters (default 25M = 100 MB):

- the raw AES-256-CTR keystream rate (the PRG, via ``cryptography``);
- quantize alone, one mask stream alone (PRG + modular add), quantize + one
  mask (target: at least 3 GB/s of model bytes);
- quantize + 8 masks, the work of a neighbour with 8 mask partners (target:
  under 0.25 s for 25M parameters), and the same through ``MaskingSender``
  for a 9-neighbour neighbourhood (1 self mask + 8 pair masks, seed
  derivation and Shamir dealing included);
- the receiver's unmasking of 8 survivors' self masks.

Throughput is model bytes (4 per parameter) per second, best of ``--repeat``.
The process is pinned to one CPU where the OS allows it; the load average is
printed so contended numbers can be recognised.

    python simulations/bench/secagg_bench.py [--params N] [--repeat R]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from collections.abc import Callable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocols.secagg import (
    AggregatingReceiver,
    MaskingSender,
    PairKeys,
    RoundContext,
    SecAggConfig,
    Send,
    add_prg_stream,
    add_prg_streams,
    box_public_key,
    encode_and_mask,
    encode_fixed,
)
from protocols.secagg.prg import CHUNK_BYTES


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    fn()  # warm up: page in buffers, build caches
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def aes_keystream(nbytes: int) -> Callable[[], None]:
    zeros = bytearray(CHUNK_BYTES)
    out = bytearray(CHUNK_BYTES)

    def run() -> None:
        encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(bytes(16))).encryptor()
        for _ in range(nbytes // CHUNK_BYTES):
            encryptor.update_into(zeros, out)

    return run


def sender_round(x: np.ndarray, d: int, repeat: int) -> float:
    """Best time of neighbour n0's own work in a d-neighbourhood: deal, open shares, mask.

    The other neighbours and the receiver are set up outside the timed part.
    """
    names = [f"n{i}" for i in range(d)]
    private = {n: hashlib.sha256(n.encode()).digest() for n in names}
    public = {n: box_public_key(k) for n, k in private.items()}
    ctx = RoundContext(b"bench", 1, "recv", tuple(names), SecAggConfig())
    best = float("inf")
    for _ in range(repeat + 1):
        receiver = AggregatingReceiver(ctx, dim=len(x))
        receiver.start(0.0)
        senders = {n: MaskingSender(ctx, keys=PairKeys(n, private[n], public)) for n in names}
        others = [(n, s.share(os.urandom(32))[0].message) for n, s in senders.items() if n != "n0"]
        start = time.perf_counter()
        (keys,) = senders["n0"].share(os.urandom(32))
        dealt = time.perf_counter() - start
        relays = receiver.receive("n0", keys.message, 0.0)
        for n, message in others:
            relays += receiver.receive(n, message, 0.0)
        relay = next(r for r in relays if isinstance(r, Send) and r.peer == "n0")
        start = time.perf_counter()
        senders["n0"].receive("recv", relay.message)
        senders["n0"].set_input(x, 0.1)
        best = min(best, dealt + time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=int, default=25_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    pinned = "no"
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        pinned = f"cpu {cpu}"
    n, repeat = args.params, args.repeat
    nbytes = 4 * n
    cfg = SecAggConfig()
    x = (np.random.default_rng(0).standard_normal(n) * 0.1).astype(np.float32)
    out = np.empty(n, dtype=cfg.dtype)
    seeds = [os.urandom(32) for _ in range(8)]
    print(f"secure aggregation hot path: {n:,} float32 parameters ({nbytes / 1e6:.0f} MB)")
    print(f"pinned: {pinned}; load average before: {os.getloadavg()[0]:.2f}; best of {repeat}")

    def report(label: str, seconds: float, target: str = "") -> None:
        rate = nbytes / seconds / 1e9
        print(f"  {label:<44} {seconds * 1e3:8.1f} ms  {rate:6.2f} GB/s  {target}")

    report("AES-256-CTR keystream (PRG alone)", best_of(repeat, aes_keystream(nbytes)))
    report("quantize (encode_fixed)", best_of(repeat, lambda: encode_fixed(x, 0.1, cfg, out)))
    report("1 mask stream (PRG + add)", best_of(repeat, lambda: add_prg_stream(out, seeds[0], 1)))
    one = best_of(repeat, lambda: encode_and_mask(x, 0.1, cfg, [(seeds[0], 1)], out))
    hit = "met" if nbytes / one / 1e9 >= 3 else "MISSED"
    report("quantize + 1 mask (fused)", one, f"target >= 3 GB/s: {hit}")
    streams = [(s, 1 if i % 2 else -1) for i, s in enumerate(seeds)]
    eight = best_of(repeat, lambda: encode_and_mask(x, 0.1, cfg, streams, out))
    budget = 0.25 * n / 25_000_000
    hit = "met" if eight < budget else "MISSED"
    report("quantize + 8 masks (fused)", eight, f"target < {budget:.3f} s: {hit}")
    print(f"  {'':<44} {'':>11}  {8 * nbytes / eight / 1e9:6.2f} GB/s of mask words added")
    report(
        "MaskingSender, 9 neighbours (1 self + 8 pair)",
        sender_round(x, 9, repeat),
        "(incl. X25519, HKDF, Shamir, boxes)",
    )
    report("receiver: remove 8 self masks", best_of(repeat, lambda: add_prg_streams(out, streams)))
    print(f"load average after: {os.getloadavg()[0]:.2f} (above ~1 means another process competed)")


if __name__ == "__main__":
    main()
