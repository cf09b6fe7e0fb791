"""`pac data check-store`: what the helm chart's bucket-initialisation Job and `helm test` run, against the real
S3 server (SeaweedFS on 127.0.0.1)."""

from __future__ import annotations

import os
import socket

import pytest
from pac.cli import main


@pytest.mark.s3
def test_creates_a_missing_bucket_then_checks_it(s3_env, capsys: pytest.CaptureFixture[str]) -> None:
    root = f"s3://pac-init-{os.getpid()}/store"
    flags = ["--root", root, "--storage.secure", "false"]
    assert main(["data", "check-store", *flags]) == 1  # no bucket yet: named, not created
    assert "pac-init" in capsys.readouterr().err
    assert main(["data", "check-store", *flags, "--create-bucket"]) == 0
    assert main(["data", "check-store", *flags]) == 0  # idempotent: the bucket is there now
    assert f"ok: {root}" in capsys.readouterr().out


@pytest.mark.s3
def test_refused_credentials_fail_with_a_message(s3_env, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    monkeypatch.setenv("PAC_S3_SECRET_NAME", "team-s3")  # what the pipeline and the chart set in a pod
    assert main(["data", "check-store", "--root", "s3://any-bucket/x", "--storage.secure", "false",
                 "--create-bucket"]) == 1
    err = capsys.readouterr().err
    assert "not-the-secret" not in err and "AWS_SECRET_ACCESS_KEY" in err, err
    assert "Kubernetes Secret 'team-s3'" in err  # the step's error names the Secret to fix


def test_an_endpoint_that_never_comes_up_fails_after_the_wait(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    flags = ["--root", "s3://some-bucket/x", "--storage.secure", "false", "--wait", "1"]
    assert main(["data", "check-store", *flags]) == 1
    captured = capsys.readouterr()
    assert "waiting for the object store" in captured.err and "cannot reach" in captured.err


def test_a_local_root_is_checked_for_writing(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check-store", "--root", str(tmp_path / "store")]) == 0
    assert "ok:" in capsys.readouterr().out
