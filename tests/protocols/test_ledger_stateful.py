"""Replicas converge to one valid view, whatever is written, lost, replayed or forged.

3 to 6 replicas start from one founder's snapshot (founder F, admin M0, member
M1 admitted by F, member M2 admitted by M0) and are joined pairwise by
lossy, reorderable links. Hypothesis writes genuine records through the
``Ledger`` API (admissions, revocations, plans, progress) at random replicas,
injects forged records (bad signatures, another member's namespace, outsiders,
flipped bytes, another federation, non-admins admitting, non-founders planning),
records by revoked members, and replays of genuine records (in place and moved
to another slot); it delivers, drops and partitions at random. After a full
sync every replica must show the same view, the view the model predicts, and
no record that was not genuinely written and still allowed. After every step,
each replica's incrementally maintained view equals a fresh evaluation of its
document.
"""

from __future__ import annotations

import itertools

import nacl.signing
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from pycrdt import Map
from test_ledger_sync import Net

from protocols.errors import LocalProtocolError
from protocols.ledger import Ledger
from protocols.ledger_doc import MAPS
from protocols.ledger_rules import RecordCache
from protocols.ledger_state import evaluate
from protocols.records import node_id_for, seal


def key(n: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes([n]) * 32)


F, M0 = key(1), key(2)  # founder, and the admin it grants
MEMBERS = [key(n) for n in range(3, 7)]
OUT = key(9)
EVERYONE = [F, M0, *MEMBERS]


def nid(k: nacl.signing.SigningKey) -> str:
    return node_id_for(bytes(k.verify_key))


FORGERIES = (
    "bad_signature",
    "other_namespace",
    "outsider",
    "flipped",
    "other_federation",
    "non_admin_admits",
    "non_founder_plan",
)


class LedgerReplicas(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clocks = itertools.count(100)
        self.admitted_by: dict[str, set[str]] = {nid(M0): {nid(F)}}
        self.revocations: set[tuple[str, str]] = set()
        self.progress: dict[str, bytes] = {}
        self.plan = b""
        self.genuine: set[bytes] = set()
        self.history: list[tuple[str, str, bytes]] = []

    @initialize(n=st.integers(3, 6))
    def start(self, n: int) -> None:
        genesis = Ledger.found(F, name="stateful", nonce=b"n", client_id=1000)
        genesis.admit(F, bytes(M0.verify_key), clock=genesis.next_clock(), admin=True)
        genesis.set_plan(F, {"rounds": 1}, clock=genesis.next_clock())
        genesis.admit(F, bytes(MEMBERS[0].verify_key), clock=genesis.next_clock())
        genesis.admit(M0, bytes(MEMBERS[1].verify_key), clock=genesis.next_clock())
        self.admitted_by[nid(MEMBERS[0])] = {nid(F)}
        self.admitted_by[nid(MEMBERS[1])] = {nid(M0)}
        for name in ("members", "plan"):
            for entry_key, value in genesis.entries(name).items():
                assert isinstance(value, bytes | bytearray)
                self._genuine(name, entry_key, bytes(value))
        self.plan = bytes(next(iter(genesis.entries("plan").values())))  # type: ignore[call-overload]
        snapshot = genesis.encode_state()
        fid = genesis.federation_id
        self.net = Net([Ledger.from_updates(fid, [snapshot], client_id=i + 1) for i in range(n)])
        self.n = n
        for i, j in itertools.combinations(range(n), 2):
            self.net.link(i, j)

    # -- genuine writes, through the API at one replica -----------------------------

    def _genuine(self, map_name: str, entry_key: str, value: bytes) -> None:
        self.genuine.add(value)
        self.history.append((map_name, entry_key, value))

    def _api(self, r: int, map_name: str, slot: str, write: object) -> bytes | None:
        """Run a write; record what it stored; ``None`` if the replica refused it."""
        clock = next(self.clocks)
        ledger = self.net.ledgers[r % self.n]
        try:
            update = write(ledger, clock)  # type: ignore[operator]
        except LocalProtocolError:
            return None
        value = bytes(ledger.entries(map_name)[f"{slot}@{clock}"])  # type: ignore[arg-type]
        self._genuine(map_name, f"{slot}@{clock}", value)
        self.net.write(r % self.n, update)
        return value

    @rule(r=st.integers(0, 5), by_founder=st.booleans(), m=st.sampled_from(MEMBERS))
    def admit(self, r: int, by_founder: bool, m: nacl.signing.SigningKey) -> None:
        signer = F if by_founder else M0
        vk = bytes(m.verify_key)
        if self._api(r, "members", nid(m), lambda lg, c: lg.admit(signer, vk, clock=c)):
            self.admitted_by.setdefault(nid(m), set()).add(nid(signer))

    @rule(r=st.integers(0, 5), by_founder=st.booleans(), victim=st.sampled_from([M0, *MEMBERS]))
    def revoke(self, r: int, by_founder: bool, victim: nacl.signing.SigningKey) -> None:
        signer, slot = (F if by_founder else M0), nid(victim)
        if self._api(r, "revoked", slot, lambda lg, c: lg.revoke(signer, slot, clock=c)):
            self.revocations.add((nid(signer), slot))

    @rule(r=st.integers(0, 5), rounds=st.integers(1, 50))
    def set_plan(self, r: int, rounds: int) -> None:
        plan = {"rounds": rounds}
        value = self._api(r, "plan", "plan", lambda lg, c: lg.set_plan(F, plan, clock=c))
        if value:
            self.plan = value

    @rule(
        r=st.integers(0, 5),
        writers=st.lists(st.sampled_from(EVERYONE), max_size=4),
        round_=st.integers(0, 100),
    )
    def report_progress(self, r: int, writers: list[nacl.signing.SigningKey], round_: int) -> None:
        for m in writers:

            def write(ledger: Ledger, clock: int, m: nacl.signing.SigningKey = m) -> bytes:
                return ledger.report_progress(m, round_, clock=clock)

            value = self._api(r, "progress", nid(m), write)
            if value:
                self.progress[nid(m)] = value

    # -- what must stay out of every view ---------------------------------------------

    def _inject(self, r: int, map_name: str, entry_key: str, value: bytes) -> None:
        ledger = self.net.ledgers[r % self.n]
        self.net.write(r % self.n, ledger.insert_raw(map_name, entry_key, value))

    @rule(
        r=st.integers(0, 5),
        kind=st.sampled_from(FORGERIES),
        m=st.sampled_from(EVERYONE),
        other=st.sampled_from(EVERYONE),
        data=st.data(),
    )
    def forge(
        self,
        r: int,
        kind: str,
        m: nacl.signing.SigningKey,
        other: nacl.signing.SigningKey,
        data: st.DataObject,
    ) -> None:
        fid, clock = self.net.ledgers[0].federation_id, next(self.clocks)
        map_name, slot, signer, payload = "progress", nid(m), m, {"round": 999}
        if kind == "other_namespace" and other is not m:
            slot = nid(other)
        elif kind == "outsider":
            signer, slot = OUT, nid(OUT)
        elif kind == "other_federation":
            fid = "e" * 32
        elif kind == "non_admin_admits":
            map_name, slot, signer = "members", nid(OUT), MEMBERS[0]
            vk = bytes(OUT.verify_key)
            box = bytes(OUT.verify_key.to_curve25519_public_key())
            payload = dict(verify_key=vk, box_key=box, address="", institution="", admin=False)
        elif kind == "non_founder_plan" and m is not F:
            map_name, slot, payload = "plan", "plan", {"plan": {"evil": True}}
        elif kind not in ("bad_signature", "flipped"):
            return
        entry_key, value = seal(signer, fid, map_name, slot, clock, payload)
        if kind == "bad_signature":
            value = value[:-64] + data.draw(st.binary(min_size=64, max_size=64))
        elif kind == "flipped":
            index = data.draw(st.integers(0, len(value) - 1))
            value = value[:index] + bytes([value[index] ^ 0x5A]) + value[index + 1 :]
        self._inject(r, map_name, entry_key, value)

    @rule(r=st.integers(0, 5), m=st.sampled_from([M0, *MEMBERS]))
    def revoked_member_writes(self, r: int, m: nacl.signing.SigningKey) -> None:
        if (nid(F), nid(m)) not in self.revocations:
            return  # only the founder's revocations are final; an admin's may be voided
        fid, clock = self.net.ledgers[0].federation_id, next(self.clocks)
        self._inject(r, "progress", *seal(m, fid, "progress", nid(m), clock, {"round": 1000}))

    @rule(r=st.integers(0, 5), index=st.integers(0, 10_000), moved=st.booleans())
    def replay(self, r: int, index: int, moved: bool) -> None:
        map_name, entry_key, value = self.history[index % len(self.history)]
        if moved:
            slot, _, clock = entry_key.partition("@")
            others = [nid(k) for k in EVERYONE if nid(k) != slot]
            entry_key = f"{others[index % len(others)]}@{clock}"
        self._inject(r, map_name, entry_key, value)

    @rule(r=st.integers(0, 5), index=st.integers(0, 10_000), position=st.integers(0, 10_000))
    def tamper_in_place(self, r: int, index: int, position: int) -> None:
        """Flip a byte of a genuine progress record where it is stored (it may hide it)."""
        progress = [entry for entry in self.history if entry[0] == "progress"]
        if not progress:
            return
        _, entry_key, value = progress[index % len(progress)]
        position %= len(value)
        flipped = value[:position] + bytes([value[position] ^ 0x01]) + value[position + 1 :]
        self._inject(r, "progress", entry_key, flipped)

    # -- the network ------------------------------------------------------------------

    @rule(i=st.integers(0, 5), j=st.integers(0, 5), count=st.integers(1, 8))
    def deliver(self, i: int, j: int, count: int) -> None:
        for _ in range(count):
            self.net.deliver(i % self.n, j % self.n)

    @rule(i=st.integers(0, 5), j=st.integers(0, 5))
    def drop(self, i: int, j: int) -> None:
        queue = self.net.queues.get((i % self.n, j % self.n))
        if queue:
            queue.popleft()

    @rule(i=st.integers(0, 5), j=st.integers(0, 5))
    def toggle_link(self, i: int, j: int) -> None:
        i, j = i % self.n, j % self.n
        if i == j:
            return
        if self.net.linked(i, j):
            self.net.unlink(i, j)
        else:
            self.net.link(i, j)

    @rule(i=st.integers(0, 5))
    def anti_entropy(self, i: int) -> None:
        self.net.anti_entropy(i % self.n)

    @rule()
    def full_sync_then_check(self) -> None:
        for i, j in itertools.combinations(range(self.n), 2):
            if not self.net.linked(i, j):
                self.net.link(i, j)
        self.net.drain()
        for i in range(self.n):
            self.net.anti_entropy(i)
        self.net.drain()
        self._check()

    def teardown(self) -> None:
        if hasattr(self, "net"):
            self.full_sync_then_check()

    @invariant()
    def incremental_views_match_a_fresh_evaluation(self) -> None:
        """Each replica's view, kept up to date entry by entry, is what its content says."""
        if not hasattr(self, "net"):
            return
        for ledger in self.net.ledgers:
            ledger.view()  # a lazy view may put back what a change lost
            stored = {n: dict(ledger.doc.get(n, type=Map).items()) for n in MAPS}
            assert {n: ledger.entries(n) for n in MAPS} == stored
            fresh = evaluate(
                ledger.federation_id, {n: e.items() for n, e in stored.items()}, RecordCache()
            )
            assert ledger.view() == fresh

    # -- the model --------------------------------------------------------------------

    def _check(self) -> None:
        ledgers = self.net.ledgers
        views = [_comparable(ledger) for ledger in ledgers]
        assert all(view == views[0] for view in views), "replicas disagree after a full sync"
        founder, admin = nid(F), nid(M0)
        admin_void = (founder, admin) in self.revocations
        revoked = {
            t for a, t in self.revocations if a == founder or (a == admin and not admin_void)
        }
        roster = {founder, admin} | {
            m
            for m, by in self.admitted_by.items()
            if founder in by or (admin in by and not admin_void)
        }
        ledger = ledgers[0]
        assert set(ledger.members(include_revoked=True)) == roster
        assert set(ledger.members()) == roster - revoked
        assert set(ledger.revoked()) == revoked
        view = ledger.view()
        shown = {m: r.value for m, r in view.current["progress"].items()}
        expected = {m: v for m, v in self.progress.items() if m in roster - revoked}
        assert set(shown) <= set(expected)
        assert shown == expected  # tampering in place never hides a genuine record
        assert view.current["plan"]["plan"].value == self.plan
        for records in view.current.values():
            for record in records.values():
                assert record.value in self.genuine, "a forged record is in the view"
        event(f"replicas: {self.n}")
        event(f"rejected: {'none' if not view.rejected_count else 'some'}")
        event(f"progress shown: {len(shown)}")
        event(f"revoked: {len(revoked)}; admin voided: {admin_void}")


def _comparable(ledger: Ledger) -> object:
    view = ledger.view()
    current = {name: {s: r.value for s, r in recs.items()} for name, recs in view.current.items()}
    return (view.members, set(view.revoked), current, view.rejections, ledger.name)


TestLedgerReplicas = LedgerReplicas.TestCase
TestLedgerReplicas.settings = settings(
    max_examples=25,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
