"""``micronet export --tune DEVICE``: the fast graph's runtime-dependent choices measured on the device that
will run the model, at its thread count, instead of taken from a cost model fitted on one CPU.

The package, in the order a tuning runs:

* ``request.py``: ``TuneRequest`` (device, threads, budget, a record to reuse) and ``parse_budget``;
* ``record.py``: the device fingerprint, the toolchain, the tuning record's key, its cache, and the checks that
  refuse a record made for another device, toolchain or export;
* ``candidates.py``: one candidate (a ``RuntimeProfile``) built into the file the runtime loads and checked
  exact (the parity rungs of the export) before it is timed;
* ``measure.py``: candidates timed on the device through the existing device runners (``devices.api``), in
  repeated rounds whose order alternates, and the rule that a challenger wins only by more than the noise;
* ``search.py``: greedy per switch from the default profile, the budget, the final check against the
  default, the record.

Untuned exports do not touch any of it.
"""

from __future__ import annotations

from .request import TuneRequest, parse_budget
from .search import Tuning, prepare_tuning, tune_export

__all__ = ["TuneRequest", "parse_budget", "Tuning", "prepare_tuning", "tune_export"]
