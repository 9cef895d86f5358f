"""Read one object's bytes from file:///, http(s)://, s3:// or gs://, never more than a cap: the one reader.

The model runtime fetches model files with it; the operator and `sluice run` read DriftPolicy reference profiles with
it. It imports no model runtime (no onnxruntime, Ray or Triton client), so the operator image can carry it: the
control plane may import this module and no other of serving's but config, the Ray spec and metric names.

s3:// goes through boto3 (extra `s3`) and gs:// through google-cloud-storage (extra `gcs`); each is imported only
when such a URI is read, so a laptop without them still reads files and URLs. Credentials are each library's own
defaults: for S3 the environment (AWS_ACCESS_KEY_ID..., AWS_ENDPOINT_URL for an S3-compatible store), the shared
config files, IRSA (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE) or the instance profile; for GCS Application Default
Credentials (GOOGLE_APPLICATION_CREDENTIALS, workload identity, the metadata server), STORAGE_EMULATOR_HOST honoured.
Reads block: async callers run them in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = ["SCHEMES", "ObjectReadError", "ObjectTooLarge", "read_object"]

SCHEMES = ("file", "http", "https", "s3", "gs")


class ObjectReadError(Exception):
    """The object could not be read (missing, refused, unreachable, no client library); the message starts with
    the URI and says why."""


class ObjectTooLarge(ObjectReadError):
    """The object is larger than the caller's cap; nothing past the cap was kept."""


def read_object(uri: str, max_bytes: int, timeout_s: float = 30.0) -> bytes:
    """The bytes at `uri` (an absolute file:/// URI, http(s)://, s3://BUCKET/KEY or gs://BUCKET/KEY), at most
    `max_bytes` of them; ObjectTooLarge past the cap, ObjectReadError for anything else that goes wrong."""
    parsed = urlparse(uri)
    scheme = parsed.scheme
    if scheme == "file":
        return _read_file(uri, max_bytes)
    if scheme in ("http", "https"):
        return _read_http(uri, max_bytes, timeout_s)
    if scheme in ("s3", "gs"):
        bucket, key = parsed.netloc, parsed.path.lstrip("/")
        if not bucket or not key:
            raise ObjectReadError(f"{uri}: {scheme}:// URIs name a bucket and a key ({scheme}://BUCKET/KEY)")
        if scheme == "s3":
            return _read_s3(uri, bucket, key, max_bytes, timeout_s)
        return _read_gcs(uri, bucket, key, max_bytes, timeout_s)
    raise ObjectReadError(f"{uri}: unsupported scheme {scheme!r}; use file:, http(s)://, s3:// or gs://")


def _too_large(uri: str, size: int | str | None, max_bytes: int) -> ObjectTooLarge:
    what = f"{size} bytes" if size is not None else "more bytes than that"
    return ObjectTooLarge(f"{uri}: {what}, over the {max_bytes}-byte cap")


def _read_file(uri: str, max_bytes: int) -> bytes:
    parsed = urlparse(uri)
    if parsed.netloc not in ("", "localhost"):
        raise ObjectReadError(f"{uri}: file URIs must be local and absolute (file:///abs/path)")
    path = Path(unquote(parsed.path))
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise _too_large(uri, size, max_bytes)
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)  # the file may have grown since stat
    except OSError as exc:
        raise ObjectReadError(f"{uri}: cannot be read: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise _too_large(uri, None, max_bytes)
    return data


def _read_http(uri: str, max_bytes: int, timeout_s: float) -> bytes:
    import httpx

    chunks: list[bytes] = []
    total = 0
    try:
        with (
            httpx.Client(timeout=timeout_s, follow_redirects=True) as client,
            client.stream("GET", uri) as response,
        ):
            if response.status_code != 200:
                raise ObjectReadError(f"{uri}: HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise _too_large(uri, declared, max_bytes)
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise _too_large(uri, None, max_bytes)
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise ObjectReadError(f"{uri}: download failed: {type(exc).__name__}: {exc}") from exc
    return b"".join(chunks)


def _read_s3(uri: str, bucket: str, key: str, max_bytes: int, timeout_s: float) -> bytes:
    """s3://BUCKET/KEY through boto3 with its default credential chain (AWS_ENDPOINT_URL for S3-compatible stores)."""
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError as exc:
        raise ObjectReadError(f"{uri}: s3:// needs boto3; install the extra: pip install 'sluice[s3]'") from exc
    config = Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 3})
    try:
        # A session per read: boto3's default session is not thread-safe, and the operator reads from threads.
        client = boto3.session.Session().client("s3", config=config)
        response = client.get_object(Bucket=bucket, Key=key)
        size = response.get("ContentLength")
        if isinstance(size, int) and size > max_bytes:
            response["Body"].close()
            raise _too_large(uri, size, max_bytes)
        data: bytes = response["Body"].read(max_bytes + 1)
        response["Body"].close()
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404"):
            raise ObjectReadError(f"{uri}: no such object in bucket {bucket!r}") from exc
        if code == "NoSuchBucket":
            raise ObjectReadError(f"{uri}: no such bucket {bucket!r}") from exc
        raise ObjectReadError(f"{uri}: S3 download failed: {code or type(exc).__name__}: {exc}") from exc
    except BotoCoreError as exc:  # no credentials, endpoint unreachable, timeouts
        raise ObjectReadError(f"{uri}: S3 download failed: {type(exc).__name__}: {exc}") from exc
    if len(data) > max_bytes:
        raise _too_large(uri, None, max_bytes)
    return data


def _read_gcs(uri: str, bucket: str, key: str, max_bytes: int, timeout_s: float) -> bytes:
    """gs://BUCKET/KEY with google-cloud-storage (Application Default Credentials; STORAGE_EMULATOR_HOST honoured)."""
    try:
        from google.api_core import exceptions as gexc  # a dependency of google-cloud-storage
        from google.cloud import storage
    except ImportError as exc:
        raise ObjectReadError(
            f"{uri}: gs:// needs google-cloud-storage; install the extra: pip install 'sluice[gcs]'"
        ) from exc
    try:
        blob = storage.Client().bucket(bucket).get_blob(key, timeout=timeout_s)
        if blob is None:  # GCS answers 404 alike for a missing object and a missing bucket
            raise ObjectReadError(f"{uri}: no such object in bucket {bucket!r} (or no such bucket)")
        if blob.size is not None and blob.size > max_bytes:
            raise _too_large(uri, blob.size, max_bytes)
        # The generation whose size was checked, and no other (a rewrite in between fails with 412).
        data: bytes = blob.download_as_bytes(if_generation_match=blob.generation, timeout=timeout_s)
    except ObjectReadError:
        raise
    except gexc.NotFound as exc:
        raise ObjectReadError(f"{uri}: deleted while being read: {exc}") from exc
    except Exception as exc:  # google-auth and google-api-core raise many types: no credentials, 403, timeouts
        raise ObjectReadError(f"{uri}: GCS download failed: {type(exc).__name__}: {exc}") from exc
    if len(data) > max_bytes:
        raise _too_large(uri, None, max_bytes)
    return data
