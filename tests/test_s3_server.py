"""The s3_server fixture (conftest.S3Server) is a real, authenticating S3 endpoint that a test can stop and restart."""
import os
import socket

import pytest

pytestmark = pytest.mark.slow

MiB = 1 << 20


def _error(excinfo) -> tuple[str, int]:
    r = excinfo.value.response
    return r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"]


def test_put_get_1mib_roundtrip(s3_server):
    s3 = s3_server.client()
    bucket = s3_server.make_bucket("roundtrip")
    assert s3_server.make_bucket("roundtrip") == "roundtrip"  # idempotent
    data = os.urandom(MiB)
    s3.put_object(Bucket=bucket, Key="a/1mib", Body=data)
    assert s3.get_object(Bucket=bucket, Key="a/1mib")["Body"].read() == data
    assert s3.head_object(Bucket=bucket, Key="a/1mib")["ContentLength"] == MiB


def test_auth_is_required_and_readonly_cannot_write(s3_server):
    from botocore.exceptions import ClientError

    bucket = s3_server.make_bucket("auth")
    with pytest.raises(ClientError) as e:
        s3_server.client(secret_key="wrong-secret", retries={"total_max_attempts": 1}).list_buckets()
    assert _error(e) == ("SignatureDoesNotMatch", 403)
    with pytest.raises(ClientError) as e:
        s3_server.client(access_key="no-such-key", retries={"total_max_attempts": 1}).list_buckets()
    assert _error(e) == ("InvalidAccessKeyId", 403)

    s3_server.client().put_object(Bucket=bucket, Key="k", Body=b"hello")
    ro = s3_server.client(s3_server.readonly_key, s3_server.readonly_secret)
    assert ro.get_object(Bucket=bucket, Key="k")["Body"].read() == b"hello"
    with pytest.raises(ClientError) as e:
        ro.put_object(Bucket=bucket, Key="k2", Body=b"x")
    assert _error(e) == ("AccessDenied", 403)


def test_list_bucket(s3_server):
    s3 = s3_server.client()
    bucket = s3_server.make_bucket("listing")
    keys = [f"dir/obj-{i:03d}" for i in range(25)]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="dir/", PaginationConfig={"PageSize": 10})
    listed = [(o["Key"], o["Size"]) for p in pages for o in p.get("Contents", [])]
    assert listed == [(k, len(k)) for k in keys]
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_stop_refuses_connections_and_start_keeps_the_data(s3_server):
    s3 = s3_server.client()
    bucket = s3_server.make_bucket("restart")
    data = os.urandom(MiB)
    s3.put_object(Bucket=bucket, Key="before-restart", Body=data)
    old_pid = s3_server.pid
    s3_server.stop()
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", s3_server.port), timeout=3).close()
    finally:
        s3_server.start()  # the session's other tests need it back
    assert s3_server.pid != old_pid
    # weed mini keeps master, filer and volumes in -dir, so bucket and object survive a restart on the same dir
    s3 = s3_server.client()
    assert s3.get_object(Bucket=bucket, Key="before-restart")["Body"].read() == data
