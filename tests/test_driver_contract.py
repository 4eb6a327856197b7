"""The driver contract: capabilities, normalised states, and the same lifecycle checks
against every driver."""

from __future__ import annotations

import pytest

from capstan.drivers import aws, gce, openstack, vbox, vsphere
from capstan.drivers.base import Capability, InstanceState, driver_names, get_driver


def test_every_driver_declares_capabilities_as_the_enum(cli) -> None:
    from capstan.core.config import load

    for name in driver_names():
        caps = type(get_driver(name, load())).capabilities
        assert caps and all(isinstance(c, Capability) for c in caps), name


@pytest.mark.parametrize(("table", "raw", "state"), [
    (aws._STATES, "pending", InstanceState.STARTING),
    (aws._STATES, "stopping", InstanceState.STOPPING),
    (aws._STATES, "shutting-down", InstanceState.STOPPING),
    (gce._STATES, "STAGING", InstanceState.STARTING),
    (gce._STATES, "SUSPENDED", InstanceState.PAUSED),
    (gce._STATES, "TERMINATED", InstanceState.STOPPED),
    (openstack._STATES, "BUILD", InstanceState.STARTING),
    (openstack._STATES, "PAUSED", InstanceState.PAUSED),
    (openstack._STATES, "ERROR", InstanceState.CRASHED),
    (vsphere._STATES, "suspended", InstanceState.PAUSED),
    (vbox._STATES, "aborted", InstanceState.CRASHED),
    (vbox._STATES, "stopping", InstanceState.STOPPING),
])
def test_backend_states_map_onto_the_normalised_ones(table: dict[str, InstanceState], raw: str,
                                                     state: InstanceState) -> None:
    assert table[raw] is state


def test_live_states_are_those_a_guest_can_still_run_in() -> None:
    live = {s for s in InstanceState if s.live}
    assert live == {InstanceState.STARTING, InstanceState.RUNNING, InstanceState.PAUSED,
                    InstanceState.STOPPING}


def test_a_spec_the_driver_cannot_do_is_refused_before_create(cli, image, capstan_root) -> None:
    result = cli("run", "-p", "vsphere", "-d", "-i", image, "--volume", image, "x")
    assert result.code == 69
    assert result.err.strip() == "capstan: driver 'vsphere' does not support volumes (--volume)"
    assert not (capstan_root / "instances" / "vsphere").exists()
