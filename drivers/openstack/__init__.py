"""OpenStack driver: images go to Glance as qcow2, instances are Nova servers (``-p openstack``).

Settings come through ``clouds.yaml`` / ``OS_*`` as openstacksdk reads them (the cloud
named by ``openstack_cloud``, else ``OS_CLOUD`` or the ``OS_*`` variables); they are
never logged. Images carry Capstan's tags (``tagOSv``, ``tagCapstan``) and the
``hw_disk_bus``/``hw_vif_model`` virtio properties, and are reused when Glance holds
one with the same checksum. The flavor is the one named by ``openstack_flavor``, or
the smallest that fits the disk, memory and vCPUs asked for (Capstan's picker).
"""

from capstan.drivers.openstack.driver import _STATES as _STATES
from capstan.drivers.openstack.driver import Flavor, OpenStackDriver, pick_flavor

__all__ = ["Flavor", "OpenStackDriver", "pick_flavor"]
