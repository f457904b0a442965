"""The template's Lambda functions, run in this process: handler lookup, context, template references.

Each function is what `template.yaml` says it is — `CodeUri` + `Handler` name the module and the
callable (`functions/api/` + `app.lambda_handler` → `functions.api.app.lambda_handler`, the same
import path the tests use), `Timeout` feeds the context's remaining time, and `Events` drive the
local event pumps. Handlers are imported lazily, on first use, from the repository that holds the
template.

A function runs one invocation at a time, as one warm Lambda execution environment does. The local
API server is threaded and the pumps run beside it, but handler module state is not thread-safe:
powertools' resolver keeps the current route in app-wide context, so two overlapping requests could
answer with each other's status code (a 201 route answering 200).
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .aws_resources import StackResources, load_template

Handler = Callable[[Any, Any], Any]


@dataclass
class LocalLambdaContext:
    """The attributes and method powertools and handlers read from a Lambda context."""

    function_name: str
    timeout_seconds: float
    memory_limit_in_mb: int = 512
    function_version: str = "$LATEST"
    region: str = "us-east-1"
    account_id: str = "123456789012"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _deadline: float = 0.0

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_seconds
        self.invoked_function_arn = f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.function_name}"
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = f"local/{self.aws_request_id}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    module: str
    attribute: str
    timeout: float
    memory: int
    events: Mapping[str, Mapping[str, Any]]
    event_invoke_config: Mapping[str, Any] = field(default_factory=dict)
    """Asynchronous invocation settings (retries, on-failure destination), unresolved."""


def function_specs(template: Mapping[str, Any]) -> dict[str, FunctionSpec]:
    """Every AWS::Serverless::Function: its handler's import path, timeout, memory and events (unresolved)."""
    globals_fn = (template.get("Globals") or {}).get("Function") or {}
    specs: dict[str, FunctionSpec] = {}
    for logical_id, resource in (template.get("Resources") or {}).items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.get("Properties") or {}
        code_uri = str(props["CodeUri"]).strip("/")
        module_name, _, attribute = str(props["Handler"]).rpartition(".")
        specs[logical_id] = FunctionSpec(
            logical_id=logical_id,
            module=".".join([*code_uri.split("/"), module_name]),
            attribute=attribute,
            timeout=float(props.get("Timeout", globals_fn.get("Timeout", 3))),
            memory=int(props.get("MemorySize", globals_fn.get("MemorySize", 128))),
            events=props.get("Events") or {},
            event_invoke_config=props.get("EventInvokeConfig") or {},
        )
    return specs


class TemplateRefs:
    """Resolves the few references event sources use (`!Ref DataBucket`, `!GetAtt Queue.Arn`) to the local resources."""

    def __init__(self, resources: StackResources, template: Mapping[str, Any]) -> None:
        self.resources = resources
        self.defaults = {name: spec.get("Default") for name, spec in (template.get("Parameters") or {}).items()}
        self.refs: dict[str, str] = {"DataBucket": resources.bucket, "JobsTable": resources.table, "NotificationsTopic": resources.topic_arn}
        self.refs.update(resources.queues)
        self.arns: dict[str, dict[str, str]] = {logical_id: {"Arn": arn} for logical_id, arn in resources.queue_arns.items()}
        self.arns.setdefault("JobsTable", {})["StreamArn"] = resources.table_stream_arn

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.resolve(item) for item in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, value),) = node.items()
            if key == "Ref":
                if value in self.refs:
                    return self.refs[value]
                if value in self.defaults:
                    return self.defaults[value]
                raise KeyError(f"Ref {value}: no local resource or parameter of that name")
            if key == "Fn::GetAtt":
                logical_id, attribute = value.split(".", 1) if isinstance(value, str) else value
                return self.arns[logical_id][attribute]
        return {key: self.resolve(value) for key, value in node.items()}

    def queue_url_for_arn(self, arn: str) -> str:
        for logical_id, queue_arn in self.resources.queue_arns.items():
            if queue_arn == arn:
                return self.resources.queues[logical_id]
        raise KeyError(f"no local queue with ARN {arn}")


class LocalFunction:
    """One Lambda function: imports its handler on first use and calls it with a fresh context per invocation."""

    def __init__(self, spec: FunctionSpec, repo_root: Path, *, region: str = "us-east-1") -> None:
        self.spec = spec
        self.repo_root = repo_root
        self.region = region
        self._handler: Handler | None = None
        self._lock = threading.Lock()
        self._execution_environment = threading.Lock()
        self.invocations = 0

    @property
    def handler(self) -> Handler:
        with self._lock:
            if self._handler is None:
                root = str(self.repo_root)
                if root not in sys.path:
                    sys.path.insert(0, root)
                module = importlib.import_module(self.spec.module)
                self._handler = getattr(module, self.spec.attribute)
            return self._handler

    def context(self) -> LocalLambdaContext:
        return LocalLambdaContext(function_name=f"loraforge-local-{self.spec.logical_id}", timeout_seconds=self.spec.timeout,
                                  memory_limit_in_mb=self.spec.memory, region=self.region)

    def invoke(self, event: Any) -> Any:
        handler = self.handler
        with self._execution_environment:
            self.invocations += 1
            return handler(event, self.context())


class LocalFunctions:
    """All functions of the template, by logical id."""

    def __init__(self, template_path: Path, *, region: str = "us-east-1") -> None:
        self.template_path = template_path
        self.template = load_template(template_path)
        self.repo_root = template_path.resolve().parent
        self.specs = function_specs(self.template)
        self._functions = {logical_id: LocalFunction(spec, self.repo_root, region=region) for logical_id, spec in self.specs.items()}

    def __getitem__(self, logical_id: str) -> LocalFunction:
        return self._functions[logical_id]

    def __contains__(self, logical_id: object) -> bool:
        return logical_id in self._functions

    def with_event_type(self, event_type: str) -> list[tuple[LocalFunction, str, Mapping[str, Any]]]:
        """(function, event name, event properties) for every event of this SAM type (DynamoDB, SQS, HttpApi…)."""
        found = []
        for function in self._functions.values():
            for name, event in function.spec.events.items():
                if event.get("Type") == event_type:
                    found.append((function, name, event.get("Properties") or {}))
        return found
