"""S3 storage adapter: presigned URLs scoped to one prefix, JSON documents, streaming reads."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, BinaryIO

from botocore.exceptions import ClientError

from ..models.common import utcnow
from ..settings import get_settings
from . import keys
from .clients import client


class PresignedPost(dict):
    """`{url, fields, expires_at}`: an S3 presigned POST (the browser/CLI form upload)."""


class Storage:
    def __init__(self, bucket: str | None = None) -> None:
        self.bucket = bucket or get_settings().bucket_name

    @property
    def _s3(self) -> Any:
        return client("s3")

    # -- presigning -------------------------------------------------------------------------
    def presigned_get(self, key: str, ttl_seconds: int | None = None, filename: str | None = None) -> tuple[str, str]:
        """Returns (url, expires_at ISO)."""
        ttl = ttl_seconds or get_settings().presign_ttl_seconds
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        url = self._s3.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl)
        return url, (utcnow() + timedelta(seconds=ttl)).isoformat()

    def presigned_post(self, prefix: str, *, max_bytes: int, ttl_seconds: int, exact_key: str | None = None) -> PresignedPost:
        """A POST policy that can only write under `prefix` (starts-with) and at most `max_bytes`.

        With `exact_key` the policy pins one key instead (dataset uploads).
        """
        if not prefix.endswith("/"):
            raise ValueError("prefix must end with '/' so the policy cannot match a sibling prefix")
        key = exact_key or prefix + "${filename}"
        key_condition: list[Any] = ["eq", "$key", exact_key] if exact_key else ["starts-with", "$key", prefix]
        conditions: list[Any] = [key_condition, ["content-length-range", 1, max_bytes]]
        post = self._s3.generate_presigned_post(
            Bucket=self.bucket, Key=key, Conditions=conditions, ExpiresIn=ttl_seconds
        )
        return PresignedPost(
            url=post["url"], fields=post["fields"], expires_at=(utcnow() + timedelta(seconds=ttl_seconds)).isoformat()
        )

    def job_output_post(self, owner: str, job_id: str, ttl_seconds: int) -> PresignedPost:
        return self.presigned_post(
            keys.job_prefix(owner, job_id), max_bytes=get_settings().max_artifact_bytes, ttl_seconds=ttl_seconds
        )

    def dataset_upload_post(self, owner: str, dataset_id: str) -> PresignedPost:
        settings = get_settings()
        return self.presigned_post(
            keys.dataset_prefix(owner, dataset_id),
            max_bytes=settings.max_dataset_bytes,
            ttl_seconds=settings.upload_ttl_seconds,
            exact_key=keys.dataset_archive_key(owner, dataset_id),
        )

    # -- objects ----------------------------------------------------------------------------
    def head(self, key: str) -> dict[str, Any] | None:
        try:
            return self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def open(self, key: str, version_id: str | None = None) -> BinaryIO:
        """A streaming body; the caller reads it in chunks (never the whole archive in memory)."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if version_id:
            params["VersionId"] = version_id
        return self._s3.get_object(**params)["Body"]

    def download(self, key: str, path: str) -> None:
        self._s3.download_file(self.bucket, key, path)

    def upload_file(self, path: str, key: str, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else None
        self._s3.upload_file(path, self.bucket, key, ExtraArgs=extra)

    def put_bytes(self, key: str, body: bytes, content_type: str = "application/octet-stream") -> None:
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)

    def put_json(self, key: str, document: Any) -> None:
        self.put_bytes(key, json.dumps(document, separators=(",", ":")).encode(), "application/json")

    def get_json(self, key: str) -> Any:
        return json.loads(self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def list_keys(self, prefix: str, limit: int = 10_000) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            out.extend(page.get("Contents", []))
            if len(out) >= limit:
                return out[:limit]
        return out

    def copy(self, source_key: str, dest_key: str, source_version_id: str | None = None) -> None:
        """Server-side copy (single request: up to 5 GB). With `source_version_id`, exactly that version."""
        source = {"Bucket": self.bucket, "Key": source_key}
        if source_version_id:
            source["VersionId"] = source_version_id
        self._s3.copy_object(Bucket=self.bucket, Key=dest_key, CopySource=source)

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=key)
