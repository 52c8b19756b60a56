"""Fleet errors as HTTP statuses: the mapping lives in fleet.http.statuses, below
the routes (the console renders its error pages with it too) and the wiring."""

from __future__ import annotations

from fleet.http.statuses import status_for

__all__ = ["status_for"]
