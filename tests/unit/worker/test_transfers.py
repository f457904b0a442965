"""Presigned POST uploads and presigned GET downloads (no network: httpx MockTransport)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import httpx
import pytest

from loraforge.contract import OutputTarget
from loraforge.models.artifact import ArtifactKind
from loraforge_worker.download import DownloadError, download
from loraforge_worker.uploader import Uploader, UploadError

TARGET = OutputTarget(url="https://bucket.s3.amazonaws.com/", fields={"key": "jobs/alice/job_1/${filename}", "policy": "P",
                                                                      "x-amz-signature": "S"},
                      prefix="jobs/alice/job_1/", max_bytes=1000)


def form_parts(request: httpx.Request) -> list[tuple[str, bytes]]:
    boundary = re.search(r"boundary=([^;]+)", request.headers["content-type"]).group(1).encode()
    parts = []
    for chunk in request.content.split(b"--" + boundary)[1:-1]:
        head, _, body = chunk.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]+)"', head).group(1).decode()
        parts.append((name, body[:-2]))
    return parts


def test_upload_posts_the_policy_fields_then_the_file_under_the_job_prefix(tmp_path: Path):
    seen: list[httpx.Request] = []

    def s3(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return httpx.Response(204)

    path = tmp_path / "lora_000000010.safetensors"
    path.write_bytes(b"weights" * 10)
    uploader = Uploader(TARGET, transport=httpx.MockTransport(s3))

    artifact = uploader.upload_sync(path, ArtifactKind.CHECKPOINT, 10)

    parts = form_parts(seen[0])
    assert [name for name, _ in parts] == ["key", "policy", "x-amz-signature", "file"]  # S3 wants the file last
    assert dict(parts)["key"] == b"jobs/alice/job_1/checkpoints/lora_000000010.safetensors"
    assert artifact.key == "jobs/alice/job_1/checkpoints/lora_000000010.safetensors"
    assert artifact.size == 70 and artifact.sha256 == hashlib.sha256(b"weights" * 10).hexdigest() and artifact.step == 10


@pytest.mark.parametrize(("kind", "folder"), [(ArtifactKind.SAMPLE, "samples"), (ArtifactKind.FINAL, "final"),
                                              (ArtifactKind.LOG, "logs"), (ArtifactKind.OPTIMIZER, "checkpoints")])
def test_each_kind_goes_to_its_folder(kind, folder):
    assert Uploader(TARGET).key_for(kind, "f.bin") == f"jobs/alice/job_1/{folder}/f.bin"


@pytest.mark.parametrize("name", ["../escape.bin", "a/b.bin", "", ".."])
def test_names_that_could_leave_the_folder_are_refused(name):
    with pytest.raises(UploadError):
        Uploader(TARGET).key_for(ArtifactKind.SAMPLE, name)


def test_transient_errors_are_retried_and_a_policy_refusal_is_not(tmp_path: Path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x")
    answers = iter([httpx.Response(503), httpx.Response(204)])
    uploader = Uploader(TARGET, transport=httpx.MockTransport(lambda r: next(answers)), backoff_seconds=0)
    assert uploader.upload_sync(path, ArtifactKind.LOG, 0).size == 1

    calls = []
    refusing = Uploader(TARGET, transport=httpx.MockTransport(lambda r: calls.append(r) or httpx.Response(403, text="expired")),
                        backoff_seconds=0)
    with pytest.raises(UploadError, match="403"):
        refusing.upload_sync(path, ArtifactKind.LOG, 0)
    assert len(calls) == 1


def test_files_beyond_the_policy_size_or_empty_are_not_sent(tmp_path: Path):
    big, empty = tmp_path / "big.bin", tmp_path / "empty.bin"
    big.write_bytes(b"x" * 1001)
    empty.write_bytes(b"")
    uploader = Uploader(TARGET, transport=httpx.MockTransport(lambda r: pytest.fail("must not upload")))
    with pytest.raises(UploadError, match="at most 1000"):
        uploader.upload_sync(big, ArtifactKind.FINAL, 1)
    with pytest.raises(UploadError, match="empty"):
        uploader.upload_sync(empty, ArtifactKind.FINAL, 1)


def client(handler) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def test_download_streams_to_disk_and_checks_size_and_sha256(tmp_path: Path):
    data = b"zipdata" * 100
    got = download("https://s3/x", tmp_path / "d.zip", max_bytes=10_000, expected_sha256=hashlib.sha256(data).hexdigest(),
                   expected_size=len(data), client=client(lambda r: httpx.Response(200, content=data)))
    assert got.path.read_bytes() == data and got.sha256 == hashlib.sha256(data).hexdigest()


def test_a_checksum_mismatch_is_refused_and_nothing_is_left_behind(tmp_path: Path):
    with pytest.raises(DownloadError) as err:
        download("https://s3/x", tmp_path / "d.zip", max_bytes=100, expected_sha256="0" * 64,
                 client=client(lambda r: httpx.Response(200, content=b"abc")))
    assert err.value.reason == "checksum" and not (tmp_path / "d.zip").exists()


def test_oversized_downloads_stop_early(tmp_path: Path):
    with pytest.raises(DownloadError) as declared:
        download("https://s3/x", tmp_path / "a", max_bytes=10, client=client(lambda r: httpx.Response(200, content=b"x" * 50)))
    assert declared.value.reason == "too_large"

    def no_length(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=httpx.ByteStream(b"x" * 50), headers={})

    with pytest.raises(DownloadError) as streamed:
        download("https://s3/x", tmp_path / "b", max_bytes=10, client=client(no_length))
    assert streamed.value.reason == "too_large" and not (tmp_path / "b").exists()


@pytest.mark.parametrize(("status", "words"), [(403, "expired"), (404, "no longer exists")])
def test_403_and_404_fail_at_once_with_a_readable_reason(tmp_path: Path, status, words):
    calls = []
    with pytest.raises(DownloadError) as err:
        download("https://s3/x", tmp_path / "d", max_bytes=10, backoff_seconds=0,
                 client=client(lambda r: calls.append(r) or httpx.Response(status)))
    assert err.value.status == status and words in err.value.message and len(calls) == 1


def test_5xx_and_connection_errors_are_retried(tmp_path: Path):
    answers = iter([httpx.ConnectError("boom"), httpx.Response(503), httpx.Response(200, content=b"ok")])

    def flaky(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    got = download("https://s3/x", tmp_path / "d", max_bytes=10, backoff_seconds=0, client=client(flaky))
    assert got.size == 2
