"""MLflow tracking as a Dagster resource, around ``mlflow.MlflowClient`` (no global state).

One MLflow run per training epoch and per evaluation, tagged with the Dagster run id, asset and
partition; it ends FINISHED, or FAILED when the step raises — never left RUNNING.
Default store: SQLite under ``<data root>/mlflow/`` with artifacts next to it; set
``tracking_uri`` for a real server. Open the UI on the local store with
``mlflow ui --backend-store-uri sqlite:///data/mlflow/mlflow.db --host 127.0.0.1``.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlsplit

import dagster as dg

# redact: a tracking URI fit for logs, metadata and the UI (no user, password, query string or
# fragment) — the core's one redaction, shared with the pool's source URIs.
from dynamics_assets.core.ingest.sources import redact  # noqa: F401  (re-exported)


class TrackedRun:
    """A live MLflow run: metrics, params, artifacts."""

    def __init__(self, client, run_id: str, tracking_uri: str) -> None:
        self.client, self.run_id, self._uri = client, run_id, tracking_uri

    def log_params(self, params: dict[str, Any]) -> None:
        for k, v in params.items():
            self.client.log_param(self.run_id, k, json.dumps(v) if isinstance(v, (dict, list)) else v)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for k, v in metrics.items():
            self.client.log_metric(self.run_id, k.replace("@", "_at_"), float(v), step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    @property
    def url_hint(self) -> str:
        return f"{redact(self._uri)} run {self.run_id}"


class MlflowResource(dg.ConfigurableResource):
    tracking_uri: Optional[str] = None
    data_root: str = "data"
    experiment: str = "dynamics_assets"

    def resolved_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        store = Path(self.data_root).resolve() / "mlflow"
        store.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{store / 'mlflow.db'}"

    def _experiment_id(self, client) -> str:
        exp = client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        location = None  # a tracking server decides where its artifacts go
        if urlsplit(self.resolved_uri()).scheme in ("sqlite", "file", ""):  # a local store: beside it
            location = (Path(self.data_root).resolve() / "mlflow" / "artifacts").as_uri()
        return client.create_experiment(self.experiment, artifact_location=location)

    @contextlib.contextmanager
    def start_run(self, context: dg.AssetExecutionContext | None, run_name: str,
                  tags: dict[str, str] | None = None) -> Iterator[TrackedRun]:
        from mlflow import MlflowClient

        uri = self.resolved_uri()
        client = MlflowClient(tracking_uri=uri)
        all_tags = dict(tags or {})
        if context is not None:
            all_tags["dagster.run_id"] = context.run.run_id
            # a multi_asset (checkpoint + feedback_plan) has no single asset_key: name every selected one
            all_tags["dagster.asset"] = ", ".join(sorted(k.to_user_string() for k in context.selected_asset_keys))
            if context.has_partition_key:
                all_tags["dagster.partition"] = context.partition_key
        run = client.create_run(self._experiment_id(client), run_name=run_name, tags=all_tags)
        handle = TrackedRun(client, run.info.run_id, uri)
        try:
            yield handle
        except BaseException:
            client.set_terminated(run.info.run_id, status="FAILED")
            raise
        client.set_terminated(run.info.run_id, status="FINISHED")
