"""An IO manager that keeps each run's asset outputs apart.

Dagster's filesystem and S3 pickle IO managers store an asset's output under its key alone, so two
overlapping runs read each other's outputs: run A's `champion_model` once promoted the candidate
run B had just stored. Here every unpartitioned asset output is stored under ``<asset>/<run id>``,
and an input is read from:

1. the current run, if this run materialized the asset;
2. the run this one re-executes (parent, then root), if that run did;
3. otherwise the run of the asset's latest materialization in the instance.

Partitioned assets keep Dagster's ``<asset>/<partition>`` layout. Ops that are not assets keep
Dagster's own per-run layout.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from dagster import InputContext, OutputContext


class AssetNotMaterializedError(FileNotFoundError):
    """An input asset has no stored output anywhere; the message names it."""


class RunScopedPaths:
    """Mixin for a ``UPathIOManager``: unpartitioned asset outputs live under ``<asset>/<run id>``."""

    def _get_path(self, context: InputContext | OutputContext):  # noqa: D401 - UPathIOManager hook
        if not context.has_asset_key or context.has_asset_partitions:
            return super()._get_path(context)
        folder = self._get_path_without_extension(context)
        return self._with_extension(folder / self._run_id_for(context, folder))

    def _run_id_for(self, context: InputContext | OutputContext, folder) -> str:
        if isinstance(context, OutputContext):
            return context.run_id
        run = context.step_context.dagster_run
        for run_id in dict.fromkeys(r for r in (run.run_id, run.parent_run_id, run.root_run_id) if r):
            if self.path_exists(self._with_extension(folder / run_id)):
                return run_id
        latest = context.instance.get_latest_materialization_event(context.asset_key)
        if latest is None or not latest.run_id:
            raise AssetNotMaterializedError(
                f"asset {context.asset_key.to_user_string()} has never been materialized: materialize it first")
        return latest.run_id


def _filesystem_manager(base_dir: str):
    from dagster._core.storage.fs_io_manager import PickledObjectFilesystemIOManager

    class RunScopedFilesystemIOManager(RunScopedPaths, PickledObjectFilesystemIOManager):
        pass

    return RunScopedFilesystemIOManager(base_dir=base_dir)


def _s3_manager(bucket: str, prefix: str, endpoint_url: str | None, credentials: dict[str, str | None]):
    import boto3
    from dagster_aws.s3.io_manager import PickledObjectS3IOManager

    class RunScopedS3IOManager(RunScopedPaths, PickledObjectS3IOManager):
        def __init__(self, s3_bucket: str, s3_session, s3_prefix: str):
            # Dagster's own __init__ lists the bucket, so an unreachable S3 failed resource set-up with
            # a bare connection error; the first read or write reports it instead (and in `stack` the
            # settings resource's start check names the service first).
            from upath import UPath

            self.bucket, self.s3 = s3_bucket, s3_session
            dg.UPathIOManager.__init__(self, base_path=UPath(s3_prefix) if s3_prefix else None)

    client = boto3.client("s3", endpoint_url=endpoint_url, **{k: v for k, v in credentials.items() if v})
    return RunScopedS3IOManager(s3_bucket=bucket, s3_prefix=prefix, s3_session=client)


class RunScopedIOManager(dg.ConfigurableIOManagerFactory):
    """Pickles on a local folder (``base_dir``) or in an S3 bucket (``s3_bucket``), one copy per run."""

    base_dir: str | None = None
    s3_bucket: str | None = None
    s3_prefix: str = "dagster-io"
    s3_endpoint_url: str | None = None
    aws_access_key_id: str | None = None  # else boto3's own chain (environment, instance role)
    aws_secret_access_key: str | None = None

    def create_io_manager(self, context) -> Any:
        if self.s3_bucket:
            return _s3_manager(self.s3_bucket, self.s3_prefix, self.s3_endpoint_url,
                               {"aws_access_key_id": self.aws_access_key_id,
                                "aws_secret_access_key": self.aws_secret_access_key})
        if not self.base_dir:
            raise ValueError("RunScopedIOManager needs base_dir or s3_bucket")
        return _filesystem_manager(self.base_dir)
