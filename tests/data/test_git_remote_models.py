"""Two models of one catalog on one shared DVC git remote (the `stack` layout, here with a local bare
repository and the local DVC remote): each model reads, lists and tags only its own tables."""

from __future__ import annotations

import subprocess

import pandas as pd

from mlops_assets.data.git_remote import GitRemoteVersioner
from mlops_assets.settings import PROJECT_ROOT, get_settings


def test_models_sharing_a_git_remote_keep_their_tables_apart(tmp_path):
    remote = tmp_path / "data.git"
    subprocess.run(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(remote)], check=True)
    env = {"MLOPS_HOME": str(tmp_path / "home"), "MLOPS_MODELS_DIR": str(PROJECT_ROOT / "examples" / "models"),
           "MLOPS_DATA_GIT_URL": str(remote)}
    versioners = {name: GitRemoteVersioner(get_settings({**env, "MLOPS_MODEL_NAME": name})) for name in ("churn", "tumor")}
    for settings in (v.settings for v in versioners.values()):
        settings.ensure_dirs()
    frames = {"churn": pd.DataFrame({"customer_id": [1, 2, 3], "churned": [0, 1, 0]}),
              "tumor": pd.DataFrame({"patient_id": [7, 8], "malignant": [1, 1]})}
    recorded = {name: versioners[name].commit_table(frames[name], "dataset", message=f"{name} data")
                for name in ("churn", "tumor")}

    for name, versioner in versioners.items():
        pd.testing.assert_frame_equal(versioner.read_table("dataset"), frames[name])  # the branch head
        pd.testing.assert_frame_equal(versioner.read_table("dataset", md5=recorded[name].md5), frames[name])
        assert versioner.versions("dataset") == [recorded[name].md5]
    assert recorded["tumor"].tag == f"tumor.dataset-{recorded['tumor'].md5}"
    files = subprocess.run(["git", "--git-dir", str(remote), "ls-tree", "--name-only", "main"], check=True,
                           capture_output=True, text=True).stdout.split()
    assert {"churn.dataset.parquet.dvc", "tumor.dataset.parquet.dvc"} <= set(files)
