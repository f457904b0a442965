"""The embedded local stack (DESIGN §10): moto, the RunPod emulator with real workers, the event pumps
and the HTTP API, all on 127.0.0.1, all in this process (the workers are child processes).

    with LocalStack(LocalStackConfig(workers=1)) as stack:
        print(stack.info["api_url"], stack.info["tokens"])

`start()` writes `<state_dir>/local.json` (DESIGN §10); `stop()` removes it and ends every worker.
The Lambda handlers run in this process with the environment a deployed function gets from the
template (`StackResources.env()`), plus the local-only settings: PUBLIC_API_URL (the local API),
RUNPOD_BASE_URL / RUNPOD_ENDPOINTS (the emulator) and LORAFORGE_LOCAL_ALLOW_LOOPBACK (webhook
receivers on loopback; no deployed stack sets it). A limit the template takes as a parameter, set in this
process's environment (`MAX_AUTO_RETRIES=0 loraforge local up`), is that parameter's value.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .api_server import LocalApiGateway, LocalApiServer, cors_from_template, routes_from_template
from .auth import LocalIssuer
from .aws_resources import DEFAULT_TEMPLATE, RUNPOD_LOCAL_API_KEY, StackResources, create_resources_from_template, parameters_from_environment
from .lambda_runtime import LocalFunctions, TemplateRefs
from .pumps import DEFAULT_POLL_INTERVAL, DynamoStreamPump, EventBridgePump, Pump, PumpHistory, SchedulePump, SqsPump
from .runpod_emulator import RunPodEmulator

log = logging.getLogger("loraforge.local.stack")

LOOPBACK = "127.0.0.1"
DEFAULT_USERS = ("alice", "bob")
STATE_FILE = "local.json"
# The tiny-sd preset's GPU class; the emulator's endpoint serves it.
LOCAL_GPU_CLASS = "cpu"
ENDPOINT_ID = "local-cpu"
REGION = "us-east-1"


@dataclass
class LocalStackConfig:
    state_dir: Path = Path(".loraforge")
    port: int = 0  # the API's port; 0 picks a free one
    workers: int = 1
    users: tuple[str, ...] = DEFAULT_USERS
    poll_interval: float = DEFAULT_POLL_INTERVAL
    reconcile_interval: float = 5.0
    template: Path = DEFAULT_TEMPLATE
    write_state: bool = True
    wait_for_workers: bool = True
    worker_start_timeout: float = 180.0
    # Extra environment for the functions (e.g. WORKER_SILENCE_SECONDS for a test); never for secrets.
    environment: dict[str, str] = field(default_factory=dict)


class _LogRedirect:
    """Handler logs (powertools JSON), pump and API access logs go to one file, not to the terminal; undone on stop."""

    def __init__(self, log_path: Path) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.stream: TextIO = log_path.open("a", encoding="utf-8", buffering=1)
        from ..observability import logger as service_logger

        handler = service_logger.registered_handler
        self._service_handler = handler if isinstance(handler, logging.StreamHandler) else None
        self._service_stream = self._service_handler.setStream(self.stream) if self._service_handler else None
        _route_local_loggers(self.stream)

    def close(self) -> None:
        if self._service_handler is not None and self._service_stream is not None:
            self._service_handler.setStream(self._service_stream)
        for name in ("loraforge.local", "werkzeug"):
            logger = logging.getLogger(name)
            logger.handlers = [h for h in logger.handlers if getattr(h, "stream", None) is not self.stream]
            logger.propagate = True
        self.stream.close()


def _route_local_loggers(stream: TextIO) -> None:
    local_logger = logging.getLogger("loraforge.local")
    for old in list(local_logger.handlers):
        local_logger.removeHandler(old)
    file_handler = logging.StreamHandler(stream)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(threadName)s %(message)s"))
    local_logger.addHandler(file_handler)
    local_logger.setLevel(logging.INFO)
    local_logger.propagate = False
    werkzeug = logging.getLogger("werkzeug")  # moto server: one line per request
    werkzeug.setLevel(logging.WARNING)
    werkzeug.handlers = [file_handler]
    werkzeug.propagate = False


class LocalStack:
    def __init__(self, config: LocalStackConfig | None = None) -> None:
        self.config = config or LocalStackConfig()
        self.history = PumpHistory()
        self.pumps: list[Pump] = []
        self.resources: StackResources | None = None
        self.functions: LocalFunctions | None = None
        self.issuer = LocalIssuer()
        self.tokens: dict[str, str] = {}
        self.info: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self._moto: Any = None
        self._api: LocalApiServer | None = None
        self.emulator: RunPodEmulator | None = None
        self._saved_env: dict[str, str | None] = {}
        self._logs: _LogRedirect | None = None
        self._stopped = threading.Event()
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def state_file(self) -> Path:
        return self.config.state_dir / STATE_FILE

    @property
    def log_path(self) -> Path:
        return self.config.state_dir / "logs" / "stack.log"

    def start(self) -> dict[str, Any]:
        started = time.perf_counter()
        config = self.config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self._logs = _LogRedirect(self.log_path)
        # Metrics are off locally (no CloudWatch); powertools warns on every empty flush otherwise.
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        self._set_env({"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
                       "AWS_SESSION_TOKEN": None, "AWS_SECURITY_TOKEN": None, "AWS_PROFILE": None,
                       "POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_TRACE_DISABLED": "true"})

        from moto.server import ThreadedMotoServer

        self._moto = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        # moto keeps its state per process, not per server: a stack started after another in the same process
        # (tests, benchmarks) starts from empty like a fresh `local up`.
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10).close()
        self._set_env({"AWS_ENDPOINT_URL": endpoint})
        self.timings["moto"] = time.perf_counter() - started

        self.functions = LocalFunctions(config.template, region=REGION)
        self.tokens = {user: self.issuer.issue(user) for user in config.users}
        gateway = LocalApiGateway(self.functions["ApiFunction"].invoke, routes_from_template(self.functions.template), self.issuer,
                                  cors_from_template(self.functions.template), region=REGION)
        self._api = LocalApiServer(gateway, port=config.port, host=LOOPBACK).start()

        self.emulator = self._start_emulator()
        runpod_base = self.emulator.base_url

        # Limits given in the environment are parameter overrides, range-checked like a deployment's.
        limits = parameters_from_environment(self.functions.template, {**os.environ, **config.environment})
        self.resources = create_resources_from_template(
            endpoint, config.template, REGION,
            parameter_overrides={**limits, "RunPodBaseUrl": runpod_base, "RunPodEndpoints": json.dumps({LOCAL_GPU_CLASS: self.emulator.endpoint_id})},
        )
        self._set_env({
            **self.resources.env(),
            "PUBLIC_API_URL": self._api.url,
            "LORAFORGE_LOCAL_ALLOW_LOOPBACK": "1",
            **config.environment,
        })
        _reset_caches()
        self.timings["resources"] = time.perf_counter() - started

        self._start_pumps()
        if config.wait_for_workers:
            # Workers import torch and the SDK before their first job-take; "ready" means they are polling.
            self.emulator.wait_until_ready(timeout=config.worker_start_timeout)
        self.timings["workers"] = time.perf_counter() - started
        self.info = {
            "api_url": self._api.url,
            "tokens": dict(self.tokens),
            "aws_endpoint_url": endpoint,
            "bucket": self.resources.bucket,
            "table": self.resources.table,
            "topic_arn": self.resources.topic_arn,
            "runpod_url": runpod_base,
        }
        if config.write_state:
            self.state_file.write_text(json.dumps(self.info, indent=2) + "\n")
            self.state_file.chmod(0o600)  # bearer tokens
        self.timings["ready"] = time.perf_counter() - started
        log.info("local stack ready in %.2f s: %s", self.timings["ready"], {k: v for k, v in self.info.items() if k != "tokens"})
        return self.info

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        phases: dict[str, float] = {}
        mark = time.perf_counter()

        def phase(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            phases[name] = round(now - mark, 2)
            mark = now

        for pump in self.pumps:
            pump.stop()
        for pump in self.pumps:
            pump.join(timeout=30)
        phase("pumps")
        if self._api is not None:
            self._api.stop()
        phase("api")
        if self.emulator is not None:
            self.emulator.stop()
        phase("emulator")
        if self._moto is not None:
            self._moto.stop()
        phase("moto")
        if self.config.write_state and self.info:
            try:
                if json.loads(self.state_file.read_text()).get("api_url") == self.info.get("api_url"):
                    self.state_file.unlink()
            except (OSError, ValueError):
                pass
        self._restore_env()
        _reset_caches()
        log.info("local stack stopped (seconds per part: %s)", phases)
        if self._logs is not None:
            self._logs.close()

    def wait(self) -> None:
        """Blocks until stop() (from a signal handler or another thread)."""
        while not self._stopped.wait(0.5):
            pass

    # -- parts -----------------------------------------------------------------------------------------
    def _start_emulator(self) -> RunPodEmulator:
        """The RunPod platform emulator with N real worker processes; their logs stay in <state_dir>/runpod/ after a stop."""
        scratch = self.config.state_dir.resolve() / "runpod"  # absolute: workers run with their own cwd
        shutil.rmtree(scratch, ignore_errors=True)  # the previous run's worker folders
        emulator = RunPodEmulator(workers=self.config.workers, endpoint_id=ENDPOINT_ID, host=LOOPBACK, api_key=RUNPOD_LOCAL_API_KEY,
                                  scratch_dir=scratch)
        return emulator.start()

    def client(self, service: str) -> Any:
        """boto3 clients for the pumps (their own, not the handlers' cached ones)."""
        with self._clients_lock:
            if service not in self._clients:
                import boto3
                from botocore.config import Config

                self._clients[service] = boto3.client(service, endpoint_url=self.info.get("aws_endpoint_url") or os.environ["AWS_ENDPOINT_URL"],
                                                      region_name=REGION, config=Config(retries={"mode": "standard", "max_attempts": 3}))
            return self._clients[service]

    def _start_pumps(self) -> None:
        assert self.functions is not None and self.resources is not None
        refs = TemplateRefs(self.resources, self.functions.template)
        kwargs: dict[str, Any] = {"poll_interval": self.config.poll_interval, "history": self.history}
        pumps: list[Pump] = []
        for function, name, props in self.functions.with_event_type("EventBridgeRule"):
            pump = EventBridgePump(function, name, props, refs, self.client, **kwargs)
            pump.setup()
            pumps.append(pump)
        for function, name, props in self.functions.with_event_type("DynamoDB"):
            pump = DynamoStreamPump(function, name, props, refs, self.client, prune_iterators=_moto_iterator_pruner(REGION), **kwargs)
            pump.setup()
            pumps.append(pump)
        for function, name, props in self.functions.with_event_type("SQS"):
            pumps.append(SqsPump(function, name, props, refs, self.client, **kwargs))
        for event_type in ("ScheduleV2", "Schedule"):
            for function, name, props in self.functions.with_event_type(event_type):
                pumps.append(SchedulePump(function, name, props, refs, self.client, interval=self.config.reconcile_interval, history=self.history))
        for pump in pumps:
            pump.start()
        self.pumps = pumps

    # -- environment -----------------------------------------------------------------------------------
    def _set_env(self, values: dict[str, str | None]) -> None:
        for name, value in values.items():
            if name not in self._saved_env:
                self._saved_env[name] = os.environ.get(name)
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def _restore_env(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()


def _reset_caches() -> None:
    """Settings, boto3 and RunPod clients and cached secrets belong to the environment they were read from."""
    from aws_lambda_powertools.utilities import parameters

    from ..dal.clients import reset_clients
    from ..providers.runpod import reset_runpod_client
    from ..settings import reset_settings

    reset_settings()
    reset_clients()
    reset_runpod_client()
    parameters.clear_caches()


def _moto_iterator_pruner(region: str) -> Callable[[str], None]:
    """moto keeps every shard iterator it ever issued; a pump polling five times a second would grow it without end.

    The server runs in this process, so a consumed iterator is dropped from its backend right away.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodbstreams.models import dynamodbstreams_backends

    def prune(iterator: str) -> None:
        dynamodbstreams_backends[DEFAULT_ACCOUNT_ID][region].shard_iterators.pop(iterator, None)

    return prune
