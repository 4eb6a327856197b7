"""Fleets: many instances declared once in ``capstan-fleet.yaml``.

:mod:`.parse` reads the file, :mod:`.plan` turns it into instances and the action ``up``
takes on each, :mod:`.reconcile` carries the actions out (``up``, ``down``, ``ps``, ``logs``).
"""

from capstan.services.fleet.hosts import LOCAL, Host, HostUnreachable
from capstan.services.fleet.parse import DEFAULT_FILE, Fleet, Service, load_fleet
from capstan.services.fleet.plan import Action, Member, plan
from capstan.services.fleet.reconcile import JOBS, Outcome, UpOptions, down, up
from capstan.services.fleet.status import Row, logs, ps

__all__ = ["DEFAULT_FILE", "JOBS", "LOCAL", "Action", "Fleet", "Host", "HostUnreachable",
           "Member", "Outcome", "Row", "Service", "UpOptions", "down", "load_fleet", "logs",
           "plan", "ps", "up"]
