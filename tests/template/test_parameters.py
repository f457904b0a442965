"""Operational limits are template parameters that cannot drift from loraforge/settings.py.

An operator tunes a limit at deploy time (`sam deploy --parameter-overrides MaxDatasetBytes=...`); the
function reads it through `get_settings()`. These tests hold the two sides together:
- every numeric setting is a Number parameter whose Default, MinValue and MaxValue are the field's default
  and bounds (CloudFormation then refuses a value the code would refuse, before any function runs);
- every environment variable a function's code can read is set for that function by the template, except
  the local-stack-only LORAFORGE_LOCAL_* ones, which a deployment never sets;
- a limit sits in Globals only when at least half the functions read it, otherwise on exactly its readers;
- the local stack resolves the parameters (defaults and overrides, Globals and per-function) like CloudFormation,
  range checks included, and takes a limit set in its environment as that parameter's override.

"Can read" is found statically: the handler module and every loraforge module it imports, transitively,
including imports inside functions (lazy imports still run on some path). That over-approximates, which is
the safe direction: a function may get a variable it never reads, never miss one it does.
"""

from __future__ import annotations

import ast
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import annotated_types
import pytest
from samtranslator.yaml_helper import yaml_parse

from loraforge.local.aws_resources import LOCALLY_SUPPLIED_VARIABLES, create_resources_from_template, parameters_from_environment
from loraforge.settings import _ENV as SETTINGS_ENV
from loraforge.settings import Settings, get_settings, reset_settings

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
LIBRARY = REPO / "layers" / "common" / "python"
LOCAL_ONLY_PREFIX = "LORAFORGE_LOCAL_"
FIELD_OF_VARIABLE = {variable: field for field, variable in SETTINGS_ENV.items()}
# ApiFunction ends runs (the RunPod and worker hooks, cancel) and then starts the next queued job, whose callbacks need the API's
# URL. The template cannot give it PUBLIC_API_URL: ApiFunction -> HttpApi -> ApiFunction is a cycle (E3004). It takes the URL
# from the request it serves instead (loraforge/public_api.py; tests/integration/dispatch/test_capacity.py shows the hand-over).
FROM_THE_REQUEST = frozenset({("ApiFunction", "PUBLIC_API_URL")})


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml_parse(TEMPLATE.read_text())


# ---------------------------------------------------------------------------------------------------
# What the template sets, and what the code reads
# ---------------------------------------------------------------------------------------------------
def _functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: r["Properties"] for name, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}


def _globals_env(template: dict[str, Any]) -> dict[str, Any]:
    return template["Globals"]["Function"]["Environment"]["Variables"]


def _own_env(function: dict[str, Any]) -> dict[str, Any]:
    return (function.get("Environment") or {}).get("Variables") or {}


def _env_of(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Function -> the variables it gets (SAM merges its own over the Globals)."""
    return {name: {**_globals_env(template), **_own_env(props)} for name, props in _functions(template).items()}


def _parameter_of(value: Any) -> str | None:
    return value["Ref"] if isinstance(value, dict) and set(value) == {"Ref"} else None


def _find_module(module: str) -> Path | None:
    base = LIBRARY.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _module_file(module: str) -> Path:
    path = _find_module(module)
    assert path is not None, module
    return path


@cache
def _imports(path: Path, module: str) -> frozenset[str]:
    """loraforge modules `path` imports anywhere in its body, with their parent packages."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join([*parts[: len(parts) - node.level + 1], node.module or ""]).strip(".") if node.level else node.module or ""
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
        elif isinstance(node, ast.Attribute) and node.attr == "import_module":
            # Modules loaded by name (the API resolver's routers): count every module below this package.
            found |= {".".join(p.relative_to(LIBRARY).with_suffix("").parts) for p in path.parent.rglob("*.py")}
    closed = {".".join(name.split(".")[:i]) for name in found for i in range(1, name.count(".") + 2)}
    modules = {name.removesuffix(".__init__") for name in closed}
    return frozenset(name for name in modules if name.startswith("loraforge") and _find_module(name))


@cache
def _settings_read(path: Path) -> frozenset[str]:
    """Environment variables whose settings field `path` reads (`settings.x`, `get_settings().x`)."""
    return frozenset(SETTINGS_ENV[n.attr] for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute) and n.attr in SETTINGS_ENV)


def _reachable(handler: Path) -> set[str]:
    seen: set[str] = set()
    todo = list(_imports(handler, handler.stem))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_imports(_module_file(module), module))
    return seen


def _reads_of(template: dict[str, Any]) -> dict[str, set[str]]:
    """Function -> every settings variable its code can read."""
    reads: dict[str, set[str]] = {}
    for name, props in _functions(template).items():
        handler = REPO / props["CodeUri"] / (props["Handler"].rpartition(".")[0] + ".py")
        reads[name] = set(_settings_read(handler)).union(*(_settings_read(_module_file(m)) for m in _reachable(handler)))
    return reads


def _bound(field: Any, kind: type) -> float | None:
    values = [getattr(m, kind.__name__.lower()) for m in field.metadata if isinstance(m, kind)]
    return values[0] if values else None


# ---------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------
def test_reach_analysis_finds_what_a_function_is_known_to_read(template: dict[str, Any]) -> None:
    # Given the functions' handlers

    # When the settings their code can read are collected
    reads = _reads_of(template)

    # Then known reads are found: through the API's routers loaded by name, and through a lazy import (finish_job -> dispatch)
    assert {"UPLOAD_TTL_SECONDS", "MAX_DATASET_BYTES", "RUNPOD_TIMEOUT_SECONDS"} <= reads["ApiFunction"]
    assert "MAX_DISPATCH_ATTEMPTS" in reads["ApiFunction"]
    assert "WORKER_SILENCE_SECONDS" in reads["ReconcileFunction"] and "WORKER_SILENCE_SECONDS" not in reads["DispatchFunction"]
    assert reads["WebhookDeliveryFunction"].isdisjoint({"MAX_DATASET_BYTES", "MAX_DISPATCH_ATTEMPTS", "WORKER_SILENCE_SECONDS"})


def test_every_numeric_setting_is_a_number_parameter_with_the_code_default_and_bounds(template: dict[str, Any]) -> None:
    # Given every variable the template fills from a parameter, per function
    parameters = template["Parameters"]
    by_variable: dict[str, set[str]] = {}
    for env in _env_of(template).values():
        for variable, value in env.items():
            if (parameter := _parameter_of(value)) in parameters:
                by_variable.setdefault(variable, set()).add(parameter)
    numeric_fields = {name for name, field in Settings.model_fields.items() if field.annotation in (int, float)}

    # When each numeric setting is compared with the parameter that sets it
    mismatches: list[str] = []
    for field_name in sorted(numeric_fields):
        variable, field = SETTINGS_ENV[field_name], Settings.model_fields[field_name]
        if len(by_variable.get(variable, ())) != 1:
            mismatches.append(f"{variable}: set from parameters {sorted(by_variable.get(variable, ()))}, expected exactly one")
            continue
        (name,) = by_variable[variable]
        spec = parameters[name]
        if spec["Type"] != "Number" or not spec.get("Description"):
            mismatches.append(f"{name}: Type {spec['Type']}, Description {spec.get('Description')!r}")
        expected = {"Default": field.default, "MinValue": _bound(field, annotated_types.Ge), "MaxValue": _bound(field, annotated_types.Le)}
        for key, code_value in expected.items():
            value = spec.get(key)
            if value != code_value:  # exact: 10 == 10.0, but 2147483647 != 2147483648
                mismatches.append(f"{name}.{key} = {value!r}, settings.{field_name} says {code_value!r}")
            elif field.annotation is int and value is not None and not isinstance(value, int):
                mismatches.append(f"{name}.{key} = {value!r} is not a whole number like settings.{field_name}")
        if any(isinstance(m, annotated_types.Gt | annotated_types.Lt) for m in field.metadata):
            mismatches.append(f"settings.{field_name}: an exclusive bound has no MinValue/MaxValue counterpart; use ge/le")

    # Then each is one Number parameter, described, whose Default/MinValue/MaxValue are the field's default and bounds
    assert numeric_fields >= {"max_dataset_bytes", "max_artifact_bytes", "worker_silence_seconds", "runpod_queue_ttl_seconds"}
    assert mismatches == []


def test_every_setting_a_function_reads_is_set_for_it_and_local_only_ones_never_are(template: dict[str, Any]) -> None:
    # Given what each function's code can read and what the template sets for it
    reads, env = _reads_of(template), _env_of(template)

    # When the two are compared
    missing = {(name, variable) for name, variables in reads.items() for variable in variables
               if variable not in env[name] and not variable.startswith(LOCAL_ONLY_PREFIX)}
    local_only_set = {(name, variable) for name, variables in env.items() for variable in variables if variable.startswith(LOCAL_ONLY_PREFIX)}

    # Then nothing a deployed function reads falls back to a code default unseen (but the API's own URL, which it reads from its request),
    # and no deployment sets a local-stack-only switch (e.g. loopback webhooks)
    assert missing - FROM_THE_REQUEST == set()
    assert local_only_set == set()


def test_limits_are_set_on_exactly_their_readers_or_globally_when_most_read_them(template: dict[str, Any]) -> None:
    # Given what each function can read, and the variables the template fills from parameters
    reads, functions = _reads_of(template), _functions(template)
    parameters = template["Parameters"]
    violations: list[str] = []

    # When a per-function variable is looked up in its function's reads, and a global limit counted over all functions
    for name, props in functions.items():
        for variable in _own_env(props):
            if variable not in reads[name]:
                violations.append(f"{name} sets {variable} but its code never reads it")
    for variable, value in _globals_env(template).items():
        readers = sum(variable in r for r in reads.values())
        if _parameter_of(value) in parameters and parameters[_parameter_of(value)]["Type"] == "Number" and 2 * readers < len(functions):
            violations.append(f"Globals set {variable}, read by only {readers} of {len(functions)} functions: set it on those")

    # Then no function carries a variable it does not read, and Globals hold only limits at least half the functions read
    assert violations == []


def test_every_parameter_is_in_exactly_one_console_group(template: dict[str, Any]) -> None:
    # Given the console's parameter groups
    groups = template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]

    # When the parameters they list are collected
    listed = [name for group in groups for name in group["Parameters"]]

    # Then every parameter appears once, and only parameters do
    assert sorted(listed) == sorted(template["Parameters"])


def _limit_parameters(template: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(variable, parameter, default) for every variable the template fills from a Number parameter."""
    for env in [_globals_env(template), *(_own_env(p) for p in _functions(template).values())]:
        for variable, value in env.items():
            name = _parameter_of(value)
            if name is not None and template["Parameters"].get(name, {}).get("Type") == "Number":
                yield variable, name, template["Parameters"][name]["Default"]


def test_local_stack_gives_every_limit_its_template_default(aws_stack: Any, template: dict[str, Any]) -> None:
    # Given the local stack built from the template without overrides
    env = aws_stack.env()

    # When its environment is read for each limit the template sets (Globals and per function)
    found = {variable: env.get(variable) for variable, _, _ in _limit_parameters(template)}

    # Then each carries the parameter's Default, as a deployment would; PUBLIC_API_URL is left to the local stack
    assert found == {variable: str(default) for variable, _, default in _limit_parameters(template)}
    assert "WORKER_SILENCE_SECONDS" in found and not LOCALLY_SUPPLIED_VARIABLES & set(env)


def test_local_stack_passes_parameter_overrides_to_the_functions(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given parameter overrides for a Globals limit and for one only reconcile reads
    overrides = {"MaxDatasetBytes": "5000000", "WorkerSilenceSeconds": "120", "RunPodBackoffSeconds": "0.25"}

    # When the local stack is created with them and the code reads its settings from that environment
    stack = create_resources_from_template(moto_server, parameter_overrides=overrides, stack_name=f"loraforge-limits-{uuid.uuid4().hex[:8]}")
    for variable, value in stack.env().items():
        monkeypatch.setenv(variable, value)
    reset_settings()
    settings = get_settings()
    reset_settings()

    # Then the functions see the overridden limits, and the rest keep their defaults
    assert (settings.max_dataset_bytes, settings.worker_silence_seconds, settings.runpod_backoff_seconds) == (5_000_000, 120, 0.25)
    assert stack.function_environments["ReconcileFunction"] == {"WORKER_SILENCE_SECONDS": "120"}
    assert settings.max_artifact_bytes == Settings.model_fields["max_artifact_bytes"].default


def test_limits_in_the_local_stack_environment_become_parameter_overrides(template: dict[str, Any]) -> None:
    # Given the environment of `MAX_AUTO_RETRIES=0 WORKER_SILENCE_SECONDS=60 loraforge local up`, with resource names beside
    environ = {"MAX_AUTO_RETRIES": "0", "WORKER_SILENCE_SECONDS": "60", "TABLE_NAME": "other-table", "RUNPOD_ENDPOINTS": "{}",
               "MAX_DATASET_BYTES": ""}

    # When the stack turns it into parameter overrides
    overrides = parameters_from_environment(template, environ)

    # Then only the limits (Number parameters, Globals or per function) are taken; resources and endpoints stay the stack's
    assert overrides == {"MaxAutoRetries": "0", "WorkerSilenceSeconds": "60"}


@pytest.mark.parametrize("value", ["6", "-1", "lots"])
def test_local_stack_refuses_a_limit_cloudformation_would_refuse(moto_server: str, value: str) -> None:
    # Given a MaxAutoRetries override outside its range (0..5) or not a number

    # When the local stack is created with it
    with pytest.raises(ValueError, match="MaxAutoRetries") as refused:
        create_resources_from_template(moto_server, parameter_overrides={"MaxAutoRetries": value}, stack_name=f"loraforge-bad-{uuid.uuid4().hex[:8]}")

    # Then it stops and says which parameter and why, as `sam deploy` would
    assert "outside 0..5" in str(refused.value) or "not a number" in str(refused.value)
