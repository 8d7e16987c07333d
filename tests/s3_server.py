"""A real S3 server for the tests: moto's server mode, on a free loopback port, started once per test session.

Tests import the fixtures from here (`from s3_server import s3_fixture, s3_server_fixture`). `s3` sets the standard
AWS variables (`AWS_ENDPOINT_URL`, test credentials and region) for the test, as a user would to point Strata at their
own S3-compatible store, so the processes a test starts reach the server too; conftest undoes them after each test.
A session fixture uses `S3Server.environment()` instead.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass

import pytest

UNSET = ("AWS_SESSION_TOKEN", "AWS_PROFILE")  # a developer's own, which would override the test credentials


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    @contextlib.contextmanager
    def environment(self):
        """The AWS variables set in os.environ while the block runs, as they were afterwards."""
        saved = {key: os.environ.get(key) for key in (*self.env(), *UNSET)}
        for key in UNSET:
            os.environ.pop(key, None)
        os.environ.update(self.env())
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def new_bucket(self) -> str:
        """A new, empty bucket: every test gets its own."""
        name = f"strata-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        """Every object key in `bucket`, sorted."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture(name="s3")
def s3_fixture(s3_server, monkeypatch):
    for key in UNSET:
        monkeypatch.delenv(key, raising=False)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server
