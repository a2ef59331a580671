"""DVC versioning of tables: every version is a DVC-tracked file, a git commit and a tag.

The workspace (`settings.data_repo`) is a small git + DVC repository of its own, so a version can
be read back through `dvc.api` by git revision, by tag, or by the DVC md5 (tags are
`<name>-<md5>`). Its remote is a local folder in the `local` profile and `s3://` in `k8s`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mlops_assets.atomic import file_lock
from mlops_assets.settings import Settings



class DataVersionError(RuntimeError):
    """A version cannot be written or read; the message names the file, remote or revision."""


@dataclass(frozen=True)
class TableVersion:
    name: str
    md5: str
    rev: str
    path: str
    remote: str

    @property
    def tag(self) -> str:
        return version_tag(self.name, self.md5)


def version_tag(name: str, md5: str) -> str:
    return f"{name}-{md5}"


class DataVersioner:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._root: Path | None = None
        self.remote = settings.dvc_remote

    @property
    def root(self) -> Path:
        """The workspace (resolved on first use: in `stack` it is a throwaway directory)."""
        return self._root or self.settings.data_repo

    @root.setter
    def root(self, path: Path) -> None:
        self._root = path

    @property
    def lock_path(self) -> Path:
        """DVC and git hold repo-wide locks that fail rather than wait: writers (threads or
        overlapping runs' processes) take turns on this file instead."""
        return self.root.parent / ".data-repo.lock"

    # --- workspace --------------------------------------------------------------------------
    def _open_repo(self):
        from dvc.repo import Repo
        from scmrepo.git import Git

        if not (self.root / ".dvc").exists():
            self.root.mkdir(parents=True, exist_ok=True)
            Git.init(str(self.root)).close()
            with open(self.root / ".git" / "config", "a") as config:  # commits need an identity
                config.write("[user]\n\tname = mlops-platform\n\temail = mlops@localhost\n")
            Repo.init(str(self.root)).close()
        repo = Repo(str(self.root))
        self._configure_remote(repo)
        return repo

    def _configure_remote(self, repo) -> None:
        with repo.config.edit() as conf:
            remote = {"url": self.remote}
            if self.remote.startswith("s3://") and self.settings.s3_endpoint_url:
                remote["endpointurl"] = self.settings.s3_endpoint_url
            conf["remote"]["storage"] = remote
            conf["core"]["remote"] = "storage"
            conf["core"]["autostage"] = True

    # --- write ------------------------------------------------------------------------------
    def commit_table(self, frame: pd.DataFrame, name: str, message: str) -> TableVersion:
        """Write ``frame`` as ``<name>.parquet``, `dvc add` + `dvc push`, commit and tag it."""
        with file_lock(self.lock_path):
            repo = self._open_repo()
            try:
                path = self.root / f"{name}.parquet"
                frame.to_parquet(path, index=False)
                md5 = repo.add(str(path))[0].outs[0].hash_info.value
                self._push(repo, path)
                return self._record(repo, name, md5, message)
            finally:
                repo.close()

    def _push(self, repo, path: Path) -> None:
        try:
            repo.push(targets=[str(path)])
        except Exception as exc:  # DVC raises many types; all mean "the remote refused"
            raise DataVersionError(f"cannot push {path.name} to DVC remote {self.remote}: {exc}") from exc

    def _record(self, repo, name: str, md5: str, message: str) -> TableVersion:
        scm = repo.scm
        tag = version_tag(name, md5)
        scm.add([str(self.root / f) for f in (f"{name}.parquet.dvc", ".gitignore", ".dvc/config")])
        if scm.is_dirty(untracked_files=False) or not self._has_commits(scm):
            scm.commit(f"{message} ({name} md5 {md5})")
        if tag not in (scm.list_tags() or []):
            scm.tag(tag)
        return TableVersion(name=name, md5=md5, rev=scm.get_rev(), path=f"{name}.parquet",
                            remote=self.remote)

    @staticmethod
    def _has_commits(scm) -> bool:
        try:
            scm.get_rev()
            return True
        except Exception:  # an empty repository has no HEAD
            return False

    def location(self, version: TableVersion) -> str:
        """Where a user finds the version's file (a path here; a git URL and tag for a git remote)."""
        return str(self.root / version.path)

    # --- read -------------------------------------------------------------------------------
    def read_table(self, name: str, rev: str | None = None, md5: str | None = None) -> pd.DataFrame:
        """Read a recorded version by git revision or tag (``rev``) or by its DVC md5."""
        import dvc.api

        if md5:
            rev = version_tag(name, md5)
        try:
            data = dvc.api.read(f"{name}.parquet", repo=str(self.root), rev=rev, mode="rb",
                                remote="storage")
        except Exception as exc:
            raise DataVersionError(f"no version {rev or 'HEAD'} of {name} in {self.root}: {exc}") from exc
        return pd.read_parquet(io.BytesIO(data))

    def versions(self, name: str) -> list[str]:
        """The md5 of every recorded version of ``name``."""
        with file_lock(self.lock_path):
            repo = self._open_repo()
            try:
                prefix = f"{name}-"
                return sorted(t[len(prefix):] for t in (repo.scm.list_tags() or []) if t.startswith(prefix))
            finally:
                repo.close()
