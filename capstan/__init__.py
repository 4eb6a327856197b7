"""pycapstan: build and run OSv unikernels.

The command-line tool is ``capstan``; the same services are a Python API:
:mod:`capstan.image` composes and inspects disks, :mod:`capstan.drivers`
runs them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pycapstan")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0"

__all__ = ["__version__"]
