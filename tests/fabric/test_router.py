"""The switch's relay (`fabric.router.Relay`) over real links: a device whose link to the switch
closes is named to the host on the host's own switch link (a host attached later too), and the
exchanges' replies go to the ranks only, never to the host's link."""
from __future__ import annotations

import socket

import numpy as np

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from fabric.link import Link
from fabric.router import Relay
from fabric.switch import Fabric

CFG = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(4, 2, 2), numerics="full")
HANG_GUARD_S = 30.0
"""Longest wait for a message the relay sends (it sends within milliseconds)."""


def _pair() -> tuple[Link, Link]:
    a, b = socket.socketpair()
    return Link(a), Link(b)


def _relay() -> tuple[Relay, dict[int, Link]]:
    """A relay of two units of two ranks, each device's end of its switch link by device id."""
    relay = Relay(Fabric(CFG), [(0, 1), (2, 3)])
    devices = {}
    for d in range(4):
        devices[d], at_switch = _pair()
        relay.attach(d, at_switch)
    return relay, devices


def test_a_device_whose_switch_link_closes_is_named_to_the_host():
    relay, devices = _relay()
    host, at_switch = _pair()
    relay.attach_host(at_switch)
    devices[3].close()  # the last unit's second rank dies: no link of the host's reaches it
    assert host.recv(HANG_GUARD_S) == {"kind": "gone", "device_id": 3}
    assert not host.readable()  # said once
    late, at_switch = _pair()
    relay.attach_host(at_switch)  # a host that connects after the death is told too
    assert late.recv(HANG_GUARD_S) == {"kind": "gone", "device_id": 3}
    assert relay.gone_ids == [3]


def test_an_exchange_answers_its_ranks_and_nothing_reaches_the_host():
    relay, devices = _relay()
    host, at_switch = _pair()
    relay.attach_host(at_switch)
    for rank, d in enumerate((2, 3)):
        devices[d].send({"kind": "exchange", "round": 0, "tag": "attn", "data": np.full((1, 2), float(rank))})
    for d in (2, 3):
        reply = devices[d].recv(HANG_GUARD_S)
        assert reply["kind"] == "full" and reply["data"].tolist() == [[0.0, 0.0, 1.0, 1.0]]
    assert not host.readable() and relay.gone_ids == []


def test_a_host_gone_before_a_death_does_not_stop_the_relay():
    relay, devices = _relay()
    host, at_switch = _pair()
    relay.attach_host(at_switch)
    host.close()  # its replica was shut down
    devices[1].close()
    devices[3].close()
    other, at_switch = _pair()
    relay.attach_host(at_switch)
    assert sorted([other.recv(HANG_GUARD_S)["device_id"], other.recv(HANG_GUARD_S)["device_id"]]) == [1, 3]
