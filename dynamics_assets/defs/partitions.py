"""Epoch partitions: keys epoch-001 … epoch-N.

A time-window definition (one "day" per epoch) rather than a static one, because the training
checkpoint of epoch e depends on the checkpoint of epoch e−1, and Dagster only allows an asset to
depend on its own earlier partitions when they are time windows (see TimeWindowPartitionMapping).
N comes from ``DYNAMICS_EPOCHS`` (default 3).
"""
from __future__ import annotations

import datetime as dt
import os

import dagster as dg

# 1900-01-01: the keys are parsed back with "%j" alone, and strptime's default year is 1900.
EPOCH_START = dt.datetime(1900, 1, 1)


def epoch_partitions_def(n_epochs: int) -> dg.TimeWindowPartitionsDefinition:
    if not 1 <= n_epochs <= 365:
        raise ValueError(f"the number of epochs must lie in [1, 365]; got {n_epochs}")
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule="0 0 * * *", start=EPOCH_START, end=EPOCH_START + dt.timedelta(days=n_epochs),
        fmt="epoch-%j")


N_EPOCHS = int(os.environ.get("DYNAMICS_EPOCHS", "3"))
epoch_partitions = epoch_partitions_def(N_EPOCHS)


def epoch_of(partition_key: str) -> int:
    """'epoch-007' → 7."""
    prefix, _, number = partition_key.partition("-")
    if prefix != "epoch" or not number.isdigit():
        raise ValueError(f"not an epoch partition key: {partition_key!r}")
    return int(number)


# One key per raw shard that landed after the pool was curated (the file name, e.g.
# "shard-00010.tar"), added by the landing sensor when the shard is complete and settled.
raw_shard_partitions = dg.DynamicPartitionsDefinition(name="raw_shard")
