"""Provenance: every run packaged as a Workflow Run RO-Crate (Process Run Crate 0.5).

``p2pfl simulate`` turns its output directory into a crate; a node writes one
into ``crate/`` of its data directory when its run ends, finished or stopped.
Either crate holds one ``CreateAction`` (listed in the root's ``mentions``):

- ``instrument``: p2pfl, a ``SoftwareApplication`` whose ``softwareRequirements``
  are Python, torch, numpy, pycrdt, websockets, PyNaCl, ... with the versions that ran;
- ``object``: the inputs (the scenario file or the plan, a graph file, the
  settings that matter as ``PropertyValue``: engine, seed, topology, overrides);
- ``result``: what the run wrote (model, metrics, plots, audit log) and, for a
  node, the SHA-256 of its ledger file as saved at the end;
- ``agent``, ``startTime``, ``endTime``, ``actionStatus`` (and ``error`` when failed).

A node crate also records each member's approval of a plan hash, read from
the ledger, as an ``EndorseAction`` by that member.

Nothing here touches the network: the JSON-LD contexts are named, never
fetched, and only local files are added. Nothing is left half written: the
files a simulation crate lists are in place before its metadata file is
written, atomically and last; a node crate is built in a temporary directory
that then replaces the previous crate. ``check_crate`` loads a crate with the
``rocrate`` library and lists what is missing or inconsistent.

The node's crate is written by the node itself (``p2pfl.node.crate``, re-exported
here), the parts every crate shares are ``p2pfl.runcrate``: both sit below the
simulators, which this package imports.
"""

from p2pfl.errors import ProvenanceError
from p2pfl.node.crate import record_node_run, write_node_crate
from p2pfl.provenance.check import check_crate
from p2pfl.provenance.simulation import write_simulation_crate
from p2pfl.runcrate import NODE_CRATE_DIR, PROFILE, clear_crate, now, software_versions

__all__ = [
    "NODE_CRATE_DIR",
    "PROFILE",
    "ProvenanceError",
    "check_crate",
    "clear_crate",
    "now",
    "record_node_run",
    "software_versions",
    "write_node_crate",
    "write_simulation_crate",
]
