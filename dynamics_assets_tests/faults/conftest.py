"""The fault suite: every probe injects one fault and asserts its exact outcome (a quarantine
reason, an error text, or a recovery), and records one row of the probe → outcome table.

The table is written at the end of the session to ``$DYNAMICS_FAULT_TABLE`` (default: a file in
the pytest cache); ``bash scripts/fault_table.sh`` runs the suite and refreshes ``docs/faults.md``,
which docs/artefacts.md links.
"""
# The ``record`` fixture and the table writer live in dynamics_assets_tests/conftest.py, so crash and
# concurrency probes elsewhere in the tests can add rows too.
