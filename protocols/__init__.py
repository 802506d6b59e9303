"""Sans-I/O protocol cores: wire messages, gossip averaging, secure aggregation, the ledger.

Nothing here touches a socket, a clock or a global random generator: bytes and
messages come in, events and messages to send go out; time and seeds are
arguments. The runtime in ``p2pfl`` drives these cores.
"""
