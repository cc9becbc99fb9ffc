"""benchmarks/s3_overhead.py runs end to end against a given server and leaves no object behind."""
import importlib
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # starts the S3 server


def test_s3_overhead_smoke(s3_server, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # spawn's children import the reference worker by name
    monkeypatch.delitem(sys.modules, "s3_overhead", raising=False)
    bench = importlib.import_module("s3_overhead")
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    bucket = s3_server.make_bucket("bench-smoke")
    bench.main(["1", "0.5", "--put-objects", "4", "--read-object-mb", "1", "--read-objects", "1",
                "--endpoint-url", s3_server.endpoint_url, "--bucket", bucket])
    out = capsys.readouterr().out
    assert "PUT 1 MiB objects, 4 per writer" in out and "GET 64 KiB ranges of 1 MiB objects" in out
    assert out.count(">= 0.95") == 2
    assert "objects left behind and removed at the end: 0" in out
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
