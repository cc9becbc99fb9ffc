"""target=s3: an S3 bucket (AWS, MinIO, SeaweedFS, Ceph RGW...) through boto3.

A run writes only under its own prefix `<target.prefix>iosweep-<pid>-<hex>/`, holding an owner
marker and the objects its workers name (`w<worker>/o<i>`, `w<worker>/m<i>`), and deletes exactly
those afterwards, never a key it did not write. A later run removes the prefix of a run whose
process died on this host (kill -9), as the local target does with its scratch dirs.

Every failure a user can fix (unreachable endpoint, missing bucket, refused credentials) is found
before the window by `prepare()` and said in one line naming the key; the client gives up on an
endpoint that does not answer after `target.connect_timeout_s`, with no retries, so that line comes
in seconds, not after minutes of botocore's back-off.
"""
from __future__ import annotations

import json
import os
import re
import secrets
from urllib.parse import urlsplit

from ..errors import ConfigError, WorkloadError
from ..spec import S3Spec, Spec
from .base import Mount, Placement, register
from .local import owner, owner_is_dead

OWNER_KEY = ".iosweep-owner"
RUN_PREFIX = re.compile(r"iosweep-\d+-[0-9a-f]{8}/")
OUR_KEYS = re.compile(r"w\d+/[om]\d+|" + re.escape(OWNER_KEY))  # under a run prefix: the only keys iosweep deletes
OBJECT_PATTERNS = ("seq_write", "seq_read", "rand_read", "mixed", "metadata")
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")  # S3's bucket naming rules
REGION = re.compile(r"[a-z0-9\-]{1,32}")
MAX_PREFIX = 512  # keys are at most 1024 bytes: leave room for iosweep's own part
PREFIX_CHARS = re.compile(r"[A-Za-z0-9!_.*'()/\-]*")  # S3's "safe characters": every server stores them as given
MAX_BUFFER_SHARE = 0.5  # the objects' buffers of all writers may take at most this share of RAM
PARENT_READ_TIMEOUT_S = 10.0  # HEAD bucket, the owner marker, cleanup: small answers, a stuck server fails fast
MIN_PART = 5 << 20  # S3 refuses multipart parts below 5 MiB (but the last)
MAX_PARTS = 10000
MAX_CONNECTIONS = 1024
LIST_PAGE = 100  # pattern=metadata's LIST: keys per request, as a client paging through a prefix


def check(spec: Spec) -> None:
    """What target=s3 accepts, before anything is contacted (called by Spec.check)."""
    s3 = spec.s3
    if spec.pattern not in OBJECT_PATTERNS:
        fix = "objects are written whole: use seq_write" if spec.pattern == "rand_write" else \
            "choose one of " + ", ".join(OBJECT_PATTERNS)
        raise ConfigError("pattern", spec.pattern, f"not with target=s3: {fix}")
    if s3.endpoint_url is not None:
        try:
            parts = urlsplit(s3.endpoint_url) if isinstance(s3.endpoint_url, str) else None
            port_ok = parts is not None and (parts.port is None or parts.port > 0)
        except ValueError:  # a port out of range or not a number
            parts, port_ok = None, False
        if not port_ok or parts.scheme not in ("http", "https") or not parts.hostname or parts.username \
                or parts.query or parts.fragment or parts.path not in ("", "/") or s3.endpoint_url != s3.endpoint_url.strip():
            raise ConfigError("target.endpoint_url", s3.endpoint_url, "must be http(s)://HOST[:PORT] "
                                                                      "(no path, no user:password@), or null for AWS")
    if not isinstance(s3.bucket, str) or not BUCKET_NAME.fullmatch(s3.bucket) or ".." in s3.bucket:
        raise ConfigError("target.bucket", s3.bucket, "must be an S3 bucket name: 3-63 characters of a-z 0-9 . -, "
                                                      "starting and ending with a letter or digit")
    prefix = s3.prefix
    if not isinstance(prefix, str) or len(prefix) > MAX_PREFIX or not PREFIX_CHARS.fullmatch(prefix) \
            or prefix.startswith("/") or "//" in prefix or any(part in (".", "..") for part in prefix.split("/")):
        raise ConfigError("target.prefix", prefix, f"must be a key prefix of at most {MAX_PREFIX} of S3's safe "
                                                   "characters (letters, digits, ! - _ . * ' ( ) and /: a server may "
                                                   "rewrite others, e.g. \\ to /), without a leading /, // or . and "
                                                   ".. parts")
    if not isinstance(s3.region, str) or not REGION.fullmatch(s3.region):
        raise ConfigError("target.region", s3.region, "must be an AWS region name such as us-east-1")
    if (s3.access_key_id is None) != (s3.secret_access_key is None):
        key = "target.secret_access_key" if s3.secret_access_key is None else "target.access_key_id"
        raise _credential_error(key, f"{key.split('.')[1]} is not set: set both target.access_key_id and "
                                     "target.secret_access_key, or neither (boto3's chain: AWS_ACCESS_KEY_ID..., "
                                     "~/.aws)")
    for key in ("access_key_id", "secret_access_key"):
        value = getattr(s3, key)
        if value is not None and (not isinstance(value, str) or not value or any(ord(c) < 33 for c in value)):
            raise _credential_error(f"target.{key}", "must be a non-empty string without spaces")
    if isinstance(s3.max_connections, bool) or not isinstance(s3.max_connections, int) \
            or not 1 <= s3.max_connections <= MAX_CONNECTIONS:
        raise ConfigError("target.max_connections", s3.max_connections, f"must be a whole number from 1 to "
                                                                         f"{MAX_CONNECTIONS}")
    for key in ("connect_timeout_s", "read_timeout_s"):
        value = getattr(s3, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
            raise ConfigError(f"target.{key}", value, "must be a number of seconds > 0 and <= 3600")
    if not isinstance(s3.create_bucket, bool):
        raise ConfigError("target.create_bucket", s3.create_bucket, "must be true or false")
    refused = (("engine", spec.engine != "sync", "iosweep's own workers drive boto3: set engine=sync"),
               ("direct", spec.direct, "O_DIRECT is a file flag: set direct=false"),
               ("hint", spec.hint != "none" or spec.prefetch_blocks, "read-ahead advice is for files: set hint=none "
                                                                     "prefetch.blocks=0"),
               ("merge_kb", spec.merge_kb is not None, "merging is for file reads: set merge_kb=null"),
               ("files_per_writer", not spec.metadata and (spec.files_per_writer != 1 or spec.file_bytes is not None),
                "objects are sized by object_mb: set files_per_writer=1 file_kb=null (pattern=metadata uses them)"))
    for key, bad, fix in refused:
        if bad:
            raise ConfigError(key, getattr(spec, key if key != "hint" else "hint"), f"not with target=s3: {fix}")
    ob = spec.object_bytes
    if isinstance(ob, bool) or not isinstance(ob, int) or ob < 1024 or ob % 1024:
        raise ConfigError("object_mb", ob / (1 << 20) if isinstance(ob, (int, float)) else ob,
                          "must be a size in MiB of at least 1 KiB (a whole number of KiB)")
    if spec.metadata:
        return
    share = spec.size_bytes // spec.writers
    if share < ob:
        raise ConfigError("size_mb", spec.size_bytes >> 20, f"too small for writers={spec.writers} x object_mb="
                                                            f"{ob / (1 << 20):g}: each writer needs one object")
    if spec.pattern == "rand_read" and spec.block_size > ob:
        raise ConfigError("block_kb", spec.block_size >> 10, f"a ranged read must fit in one object of "
                                                             f"object_mb={ob / (1 << 20):g}: lower block_kb")
    check_memory(spec)
    if spec.writes and ob > s3.multipart_bytes:
        parts = -(-ob // spec.block_size)
        if spec.block_size < MIN_PART:
            raise ConfigError("block_kb", spec.block_size >> 10, f"is the part size of multipart uploads (object_mb="
                                                                 f"{ob / (1 << 20):g} > target.multipart_mb) and S3 "
                                                                 "refuses parts below 5 MiB: set block_kb >= 5120 or "
                                                                 "raise target.multipart_mb")
        if parts > MAX_PARTS:
            raise ConfigError("block_kb", spec.block_size >> 10, f"makes {parts} parts; S3 allows {MAX_PARTS}: "
                                                                 "raise block_kb")


def _credential_error(key: str, why: str) -> ConfigError:
    """A ConfigError about a credential key, said as `key: why`: never its value (masking `key=value` would
    also swallow the text after it)."""
    e = ConfigError(key, None, why)
    e.args = (f"{key}: {why}",)
    return e


def check_memory(spec: Spec) -> None:
    """Whole objects sit in memory: iodepth read buffers, and iodepth + the ones generated ahead for writes,
    per writer. Refused past half the RAM, naming what to lower, rather than a MemoryError mid-run."""
    import psutil

    ob, depth = spec.object_bytes, spec.iodepth
    reads = depth * (spec.block_size if spec.pattern == "rand_read" else ob) if spec.reads else 0
    writes = (2 * depth + 2) * ob if spec.writes else 0
    need = spec.writers * (reads + writes)
    ram = psutil.virtual_memory().total
    if need > MAX_BUFFER_SHARE * ram:
        raise ConfigError("object_mb", ob / (1 << 20), f"needs {need / 2**30:.1f} GiB of object buffers (writers="
                                                       f"{spec.writers} x iodepth={depth} x objects in flight) and "
                                                       f"this machine has {ram / 2**30:.0f} GiB: lower object_mb, "
                                                       "iodepth or writers")


def client(s3: S3Spec, pool: int | None = None, read_timeout_s: float | None = None):
    """A boto3 S3 client: bounded connect and read timeouts and no retries (a failure is reported,
    not hidden in back-off), checksums only where S3 requires them (as a plain PUT/GET loop does),
    path-style addressing for endpoints other than AWS (MinIO, SeaweedFS, Ceph)."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=s3.connect_timeout_s, read_timeout=read_timeout_s or s3.read_timeout_s,
                    retries={"total_max_attempts": 1},  # one attempt: botocore's max_attempts counts retries
                    max_pool_connections=max(pool or 1, s3.max_connections),
                    request_checksum_calculation="when_required", response_checksum_validation="when_required",
                    s3={"addressing_style": "path" if s3.endpoint_url else "auto"})
    session = boto3.session.Session(aws_access_key_id=s3.access_key_id, aws_secret_access_key=s3.secret_access_key,
                                    region_name=s3.region)
    return session.client("s3", endpoint_url=s3.endpoint_url, config=config)


def error_line(e: BaseException, s3: S3Spec, what: str) -> tuple[str | None, str]:
    """(the key the user can fix or None, one line) for a boto3/botocore failure of `what`."""
    from botocore import exceptions as bx

    where = f"{s3.host} bucket {s3.bucket}"
    if isinstance(e, bx.ConnectionClosedError):
        return "target.endpoint_url", f"{what}: {s3.endpoint_url or where} closed the connection (the server stopped?)"
    if isinstance(e, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
        return "target.endpoint_url", (f"{what}: {s3.endpoint_url or where} cannot be reached within "
                                       f"{s3.connect_timeout_s:g} s ({type(e).__name__}): start the server or fix "
                                       "target.endpoint_url")
    if isinstance(e, bx.ReadTimeoutError):
        return None, f"{what}: {where} accepted the connection but did not answer in time (a stuck server?)"
    if isinstance(e, bx.NoCredentialsError):
        return "target.access_key_id", (f"{what}: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                                        "(or ~/.aws), or target.access_key_id and target.secret_access_key")
    if isinstance(e, bx.ClientError):
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        server = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("server", "")
        if code in ("NoSuchBucket",) or (code in ("404", "NotFound") and what.startswith("HEAD bucket")):
            return "target.bucket", (f"{what}: bucket {s3.bucket} does not exist at {s3.host}"
                                     + (f" (server: {server[:40]})" if server else "")
                                     + ": create it, set target.create_bucket=true, or check target.endpoint_url "
                                       "is an S3 server")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden",
                    "InvalidToken", "ExpiredToken") or status == 403:
            return "target.access_key_id", (f"{what}: {where} refused the credentials ({code or status}): check "
                                            "target.access_key_id / target.secret_access_key or AWS_* variables, "
                                            "and that the identity may read and write the bucket")
        return None, f"{what}: {where} answered {code or status}: {err.get('Message', '')}".rstrip(": ")
    if isinstance(e, bx.BotoCoreError):
        return None, f"{what}: {where}: {type(e).__name__}: {e}"
    raise e


def run_prefix_of(s3: S3Spec, token: str) -> str:
    base = s3.prefix if not s3.prefix or s3.prefix.endswith("/") else s3.prefix + "/"
    return f"{base}iosweep-{token}/"


@register
class S3Target:
    name = "s3"

    def __init__(self, spec: Spec, does_io: bool = True):
        self.spec = spec
        self.s3: S3Spec = spec.s3
        self._client = None

    @property
    def client(self):
        """The parent's client: its requests (HEAD bucket, markers, listings, deletes) are small, so a server
        that accepts connections but does not answer fails in PARENT_READ_TIMEOUT_S, not read_timeout_s."""
        if self._client is None:
            self._client = client(self.s3, read_timeout_s=min(self.s3.read_timeout_s, PARENT_READ_TIMEOUT_S))
        return self._client

    def _call(self, what: str, fn, *args, **kwargs):
        """A request of the parent: a failure the user can fix is a ConfigError naming the key."""
        from botocore import exceptions as bx

        try:
            return fn(*args, **kwargs)
        except (bx.BotoCoreError, bx.ClientError) as e:
            key, line = error_line(e, self.s3, what)
            if key is None:
                raise WorkloadError(line) from None
            failure = ConfigError(key, getattr(self.s3, key.split(".")[1]), line)
            if "access" in key:  # never the value: `key: line`, which no masking rule garbles either
                failure.args = (f"{key}: {line}",)
            raise failure from None

    def prepare(self) -> Placement:
        s3, c = self.s3, self.client
        try:
            head = self._call(f"HEAD bucket {s3.bucket}", c.head_bucket, Bucket=s3.bucket)
        except ConfigError as e:
            if e.key != "target.bucket" or not s3.create_bucket:
                raise
            head = self._call(f"CREATE bucket {s3.bucket}", c.create_bucket, Bucket=s3.bucket)
        server = head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("server", "")
        try:  # a versioned bucket keeps what a DELETE removes: iosweep deletes the versions it wrote
            self.versioned = c.get_bucket_versioning(Bucket=s3.bucket).get("Status") in ("Enabled", "Suspended")
        except Exception:  # noqa: BLE001 -- not implemented by the server, or not allowed: plain deletes
            self.versioned = False
        removed = self.remove_stale()
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        prefix = run_prefix_of(s3, token)
        placement = Placement(None, Mount(f"s3://{s3.bucket}/{prefix}", "s3", s3.host, "", "0:0"), None, "object")
        placement.object_prefix = prefix
        placement.extra_info = {"s3_endpoint": s3.host, "s3_bucket": s3.bucket, "s3_prefix": prefix,
                                "s3_server": server}
        if removed:
            placement.warnings.append(f"removed {removed} object(s) left under {s3.prefix or '/'} by earlier "
                                      "iosweep runs whose process died")
        if self.spec.keep_files:  # kept on purpose: a later run must not take them for a dead run's leftovers
            placement.extra_info["files"] = [f"s3://{s3.bucket}/{prefix}"]
        marker = dict(owner(os.getpid()), keep=self.spec.keep_files)
        self._call(f"PUT s3://{s3.bucket}/{prefix}{OWNER_KEY}", c.put_object, Bucket=s3.bucket,
                   Key=prefix + OWNER_KEY, Body=json.dumps(marker).encode())
        return placement

    def create_files(self, placement: Placement) -> None:
        """Objects are made by the workers (reads: laid out before the window)."""

    def cleanup(self, placement: Placement) -> None:
        """Delete what this run wrote under its own prefix, nothing else. The server being down is a
        warning naming what stays: the next run on this host removes it (remove_stale)."""
        prefix = placement.object_prefix
        if prefix is None:
            return
        try:
            if not self.delete_ours(prefix):  # not even the marker: the server stored the keys elsewhere
                placement.warnings.append(f"found nothing to delete under s3://{self.s3.bucket}/{prefix}: the "
                                          "server may have stored the objects under other names")
        except Exception as e:  # noqa: BLE001 -- any failure: say what stays, never a traceback on cleanup
            from botocore import exceptions as bx

            why = error_line(e, self.s3, "cleanup")[1] if isinstance(e, (bx.BotoCoreError, bx.ClientError)) \
                else f"{type(e).__name__}: {e}"
            placement.warnings.append(f"objects under s3://{self.s3.bucket}/{prefix} were not deleted ({why}); "
                                      "the next iosweep run on this host with this bucket deletes them")

    def delete_ours(self, prefix: str) -> int:
        """Delete the keys iosweep names under `prefix` (one of its run prefixes): the multipart uploads a
        killed worker left open, every version of them in a versioned bucket, the owner marker last (a
        cleanup cut short leaves a prefix the next run still recognises). Returns the keys deleted."""
        c, bucket = self.client, self.s3.bucket
        ours = lambda key: OUR_KEYS.fullmatch(key[len(prefix):])  # noqa: E731
        for page in c.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
            for up in page.get("Uploads", []):
                if ours(up["Key"]):
                    c.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
        if getattr(self, "versioned", False):
            found = []
            for page in c.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
                found += [{"Key": v["Key"], "VersionId": v["VersionId"]}
                          for v in page.get("Versions", []) + page.get("DeleteMarkers", []) if ours(v["Key"])]
        else:
            found = [{"Key": o["Key"]} for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                                              Prefix=prefix)
                     for o in page.get("Contents", []) if ours(o["Key"])]
        found.sort(key=lambda o: o["Key"].endswith(OWNER_KEY))
        for i in range(0, len(found), 1000):  # DeleteObjects takes at most 1000 keys
            out = c.delete_objects(Bucket=bucket, Delete={"Objects": found[i:i + 1000], "Quiet": True})
            if out.get("Errors"):
                err = out["Errors"][0]
                raise WorkloadError(f"DELETE {err.get('Key')}: {err.get('Code')} {err.get('Message', '')}")
        return len({o["Key"] for o in found})

    def remove_stale(self) -> int:
        """Delete the objects of earlier runs under target.prefix whose process died on this host."""
        c, s3 = self.client, self.s3
        base = run_prefix_of(s3, "x")[:-len("iosweep-x/")]
        removed = 0
        pages = c.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=base + "iosweep-", Delimiter="/")
        try:
            runs = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]
        except Exception:  # noqa: BLE001 -- cleaning others' leftovers is best effort
            return 0
        for run in runs:
            if not RUN_PREFIX.fullmatch(run[len(base):]):
                continue
            try:
                record = json.loads(c.get_object(Bucket=s3.bucket, Key=run + OWNER_KEY)["Body"].read())
                if not owner_is_dead(record) or record.get("keep"):
                    continue  # running, another machine's or namespace's, or kept on purpose (keep_files)
                removed += self.delete_ours(run)
            except Exception:  # noqa: BLE001 -- no marker, unreadable: not provably ours, left alone
                continue
        return removed
