"""End-to-end tests: the real Dagster UI driven by a headless browser (marked ``e2e``)."""
