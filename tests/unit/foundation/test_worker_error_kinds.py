"""One user-vs-system classification of worker errors, shared by the worker and the control plane (contract.ERROR_KINDS)."""

from __future__ import annotations

import json

import pytest

from loraforge.contract import ERROR_KINDS, WorkerErrorCode, error_kind, format_worker_error, parse_worker_error, worker_error
from loraforge.models.errors import ErrorKind, JobError


def test_every_worker_error_code_has_exactly_one_kind():
    # Given the contract's codes / Then each one is classified, and the codes a user can fix are the user ones
    assert set(ERROR_KINDS) == set(WorkerErrorCode)
    user = {code for code, kind in ERROR_KINDS.items() if kind == ErrorKind.USER}
    assert user == {WorkerErrorCode.INVALID_INPUT, WorkerErrorCode.UNKNOWN_ENGINE, WorkerErrorCode.DATASET_UNREADABLE,
                    WorkerErrorCode.DATASET_UNSAFE, WorkerErrorCode.GPU_OOM, WorkerErrorCode.CANCELLED}
    # a dataset that cannot be fetched, or changed after validation, is not the user's fault: it is retried
    assert error_kind("DATASET_DOWNLOAD_FAILED") == error_kind("DATASET_CHECKSUM_MISMATCH") == ErrorKind.SYSTEM


def test_an_unknown_code_is_a_system_error():
    assert error_kind("SOMETHING_A_NEWER_WORKER_SAYS") == ErrorKind.SYSTEM
    assert error_kind("") == ErrorKind.SYSTEM


@pytest.mark.parametrize("code", list(WorkerErrorCode))
def test_the_failure_string_runpod_keeps_gives_back_the_code_and_its_kind(code: WorkerErrorCode):
    # Given the structured error a worker fails with, as the "<CODE>: <message>" string RunPod keeps on FAILED
    error = worker_error(code, "something: with a colon in the message")
    text = format_worker_error(error)

    # When the control plane reads the string back
    parsed = parse_worker_error(text)

    # Then it is the same error, kind included
    assert parsed == error
    assert parsed.kind == ERROR_KINDS[code]


@pytest.mark.parametrize("text", [
    json.dumps({"error_type": "<class 'RuntimeError'>", "error_message": "CUDA error", "error_traceback": "..."}),
    "Traceback (most recent call last): ...",
    "NOT_A_WORKER_CODE: hello",
    "GPU_OOM",
    None,
    {"code": "GPU_OOM"},
])
def test_platform_errors_and_unknown_codes_are_not_read_as_worker_errors(text: object):
    assert parse_worker_error(text) is None


def test_a_long_message_is_cut_to_a_readable_length():
    parsed = parse_worker_error("ENGINE_CRASHED: " + "x" * 10_000)
    assert isinstance(parsed, JobError) and parsed.code == "ENGINE_CRASHED" and len(parsed.message) == 500
