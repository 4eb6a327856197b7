"""Hypervisor drivers behind one :class:`~capstan.drivers.base.Driver` ABC.

Installed as ``capstan.drivers``. Drivers are found through the
``capstan.drivers`` entry-point group and imported only when used.
"""

import logging

if __name__ != "capstan.drivers":  # drivers/ on sys.path would load every module a second time
    raise ImportError(f"drivers/ is the package capstan.drivers, not {__name__}: import it as "
                      "capstan.drivers (the repository root must not be on sys.path)")

logging.getLogger(__name__).addHandler(logging.NullHandler())
