#!/usr/bin/env bash
# The standard comparison: every recipe × seed of data/experiments.yaml on the default data,
# then the comparison report (data/artifacts/comparison_report/comparison.md). Seed-major order;
# partitions already evaluated are skipped, so an interrupted comparison continues where it stopped.
source "$(dirname "$0")/env.sh"
exec python -m dynamics_assets.pipeline --recipes all --skip-existing "$@"
