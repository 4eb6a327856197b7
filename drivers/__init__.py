"""Hypervisor drivers behind one :class:`~capstan.drivers.base.Driver` ABC.

Installed as ``capstan.drivers``. Drivers are found through the
``capstan.drivers`` entry-point group and imported only when used.
"""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
