"""template.yaml: SAM translate + cfn-lint offline, then the project's rules on the generated CloudFormation.

cfn-lint >= 1.54 no longer runs the SAM transform, so the template is translated here first (as `sam deploy`
would) and the CloudFormation output is linted: that is where cycles (E3004), bad runtimes and dangling refs show.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint
from moto.events.models import EventPattern
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

from loraforge.local.aws_resources import lambda_event_source_filters
from loraforge.settings import _ENV as SETTINGS_ENV
from tests.support.events import load_event

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"

# Managed policies SAM attaches for tracing, logs and event-source polling; nothing broader is acceptable.
ALLOWED_MANAGED_POLICIES = {
    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
    "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
    "arn:aws:iam::aws:policy/service-role/AWSLambdaDynamoDBExecutionRole",
    "arn:aws:iam::aws:policy/service-role/AWSLambdaSQSQueueExecutionRole",
}
# Actions that legitimately have no resource-level scoping.
WILDCARD_RESOURCE_ACTION_PREFIXES = ("xray:", "logs:", "cloudwatch:")
SECRET_LIKE = re.compile(r"SECRET|KEY|TOKEN|PASSWORD", re.IGNORECASE)
EXPECTED_FUNCTIONS = {
    "ApiFunction": ("functions/api/", "app.lambda_handler"),
    "IngestFunction": ("functions/ingest/", "app.lambda_handler"),
    "DispatchFunction": ("functions/dispatch/", "app.lambda_handler"),
    "ReconcileFunction": ("functions/reconcile/", "app.lambda_handler"),
    "NotifyFunction": ("functions/notify/", "app.lambda_handler"),
    "WebhookDeliveryFunction": ("functions/notify/", "webhook_app.lambda_handler"),
}


class _NoIamLoader:
    """Managed-policy names resolve without IAM; the translator only needs the loader to exist."""

    def load(self) -> dict[str, str]:
        return {}


@pytest.fixture(scope="module")
def sam_template() -> dict[str, Any]:
    return yaml_parse(TEMPLATE.read_text())


@pytest.fixture(scope="module")
def translated(sam_template: dict[str, Any]) -> dict[str, Any]:
    template = copy.deepcopy(sam_template)
    # The translator rejects local paths; `sam package` would have replaced them with S3 URIs.
    for resource in template["Resources"].values():
        props = resource.get("Properties") or {}
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str):
                props[key] = f"s3://placeholder/{props[key].strip('/')}.zip"
    return transform(template, {}, _NoIamLoader())


def _of_type(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {logical_id: r for logical_id, r in template["Resources"].items() if r["Type"] == resource_type}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _statements(policy_document: dict[str, Any]) -> list[dict[str, Any]]:
    return _as_list(policy_document["Statement"])


# ---------------------------------------------------------------------------------------------------
# Lint
# ---------------------------------------------------------------------------------------------------
def test_translated_template_has_no_cfn_lint_errors_or_warnings(translated: dict[str, Any]) -> None:
    # Given the CloudFormation that `sam deploy` would submit
    body = json.dumps(translated)

    # When cfn-lint checks it (W3005 is noise on SAM-generated resources)
    matches = lint(body, config=ManualArgs(regions=["us-east-1"], ignore_checks=["W3005"]))

    # Then it reports neither errors nor warnings
    problems = [f"{m.rule.id} {m.message} ({'/'.join(map(str, m.path or []))})" for m in matches if m.rule.id[0] in "EW"]
    assert problems == []


def test_every_resource_the_design_names_exists(translated: dict[str, Any]) -> None:
    # Given the translated template
    resources = translated["Resources"]

    # When the design's resources are looked up by logical id
    expected = {
        "DataBucket": "AWS::S3::Bucket",
        "DataBucketPolicy": "AWS::S3::BucketPolicy",
        "JobsTable": "AWS::DynamoDB::Table",
        "SigningKeySecret": "AWS::SecretsManager::Secret",
        "NotificationsTopic": "AWS::SNS::Topic",
        "IngestDLQ": "AWS::SQS::Queue",
        "DispatchFailureQueue": "AWS::SQS::Queue",
        "NotifyFailureQueue": "AWS::SQS::Queue",
        "ReconcileDLQ": "AWS::SQS::Queue",
        "WebhookDeliveryQueue": "AWS::SQS::Queue",
        "WebhookDeliveryDLQ": "AWS::SQS::Queue",
        "UserPool": "AWS::Cognito::UserPool",
        "UserPoolClient": "AWS::Cognito::UserPoolClient",
        "HttpApi": "AWS::ApiGatewayV2::Api",
        **dict.fromkeys(EXPECTED_FUNCTIONS, "AWS::Lambda::Function"),
    }
    found = {logical_id: resources.get(logical_id, {}).get("Type") for logical_id in expected}

    # Then each exists with the expected type, and the outputs clients need are there
    assert found == expected
    assert {"ApiUrl", "BucketName", "TableName", "TopicArn", "UserPoolId", "UserPoolClientId", "WebhookDeliveryDLQUrl"} <= set(translated["Outputs"])


# ---------------------------------------------------------------------------------------------------
# Functions: runtime, observability, least privilege, no secrets in the environment
# ---------------------------------------------------------------------------------------------------
def test_functions_have_expected_code_handler_runtime_and_observability(sam_template: dict[str, Any], translated: dict[str, Any]) -> None:
    # Given the SAM functions and their CloudFormation counterparts
    sam_functions = _of_type(sam_template, "AWS::Serverless::Function")
    functions = _of_type(translated, "AWS::Lambda::Function")

    # When their code location, handler and settings are read
    code = {name: (f["Properties"]["CodeUri"], f["Properties"]["Handler"]) for name, f in sam_functions.items()}
    settings = {
        name: (
            f["Properties"]["Runtime"],
            tuple(f["Properties"]["Architectures"]),
            f["Properties"]["TracingConfig"]["Mode"],
            f["Properties"]["LoggingConfig"]["LogFormat"],
        )
        for name, f in functions.items()
    }

    # Then every function is the expected one, on python3.12/arm64, traced, with JSON logs
    assert code == EXPECTED_FUNCTIONS
    assert set(settings.values()) == {("python3.12", ("arm64",), "Active", "JSON")}


def test_every_function_role_is_least_privilege(translated: dict[str, Any]) -> None:
    # Given each function and the role it runs as
    resources = translated["Resources"]
    violations: list[str] = []
    for name, function in _of_type(translated, "AWS::Lambda::Function").items():
        role_ref = function["Properties"]["Role"]
        assert "Fn::GetAtt" in role_ref, f"{name}: role must be created by this template"
        role = resources[role_ref["Fn::GetAtt"][0]]["Properties"]

        # When its managed policies and inline statements are inspected
        extra_managed = set(role.get("ManagedPolicyArns", [])) - ALLOWED_MANAGED_POLICIES
        if extra_managed:
            violations.append(f"{name}: managed policies {sorted(extra_managed)}")
        inline = [s for policy in role.get("Policies", []) for s in _statements(policy["PolicyDocument"])]
        if not inline:
            violations.append(f"{name}: no policy templates of its own")
        for statement in inline:
            actions = _as_list(statement["Action"])
            if any(action == "*" or action.endswith(":*") for action in actions):
                violations.append(f"{name}: wildcard action in {actions}")
            if "*" in _as_list(statement["Resource"]) and not all(a.startswith(WILDCARD_RESOURCE_ACTION_PREFIXES) for a in actions):
                violations.append(f"{name}: {actions} on every resource")

    # Then nothing is broader than the templates' scoped statements
    assert violations == []


def test_only_the_notify_function_may_publish_or_subscribe(translated: dict[str, Any]) -> None:
    # Given each function's inline statements
    resources = translated["Resources"]
    sns_users = set()
    for name, function in _of_type(translated, "AWS::Lambda::Function").items():
        role = resources[function["Properties"]["Role"]["Fn::GetAtt"][0]]["Properties"]
        actions = {a for policy in role.get("Policies", []) for s in _statements(policy["PolicyDocument"]) for a in _as_list(s["Action"])}
        # When the SNS actions are picked out
        if any(a.startswith("sns:") for a in actions):
            sns_users.add(name)

    # Then only the notify function (emails, and the per-job subscription it makes) may touch the topic
    assert sns_users == {"NotifyFunction"}


def test_environment_holds_no_secret_values(translated: dict[str, Any]) -> None:
    # Given every function's environment variables
    found: list[str] = []
    for name, function in _of_type(translated, "AWS::Lambda::Function").items():
        for variable, value in function["Properties"].get("Environment", {}).get("Variables", {}).items():
            # When a value resolves a secret, or a secret-looking name holds a literal that is not an ARN
            if "{{resolve:secretsmanager" in json.dumps(value) or "{{resolve:ssm-secure" in json.dumps(value):
                found.append(f"{name}.{variable} resolves a secret into the environment")
            elif SECRET_LIKE.search(variable) and isinstance(value, str) and not value.startswith("arn:"):
                found.append(f"{name}.{variable} holds a literal")

    # Then none does: secrets are read at runtime from their ARN (DESIGN §9)
    assert found == []


def test_template_environment_names_are_the_ones_settings_reads(sam_template: dict[str, Any]) -> None:
    # Given the variables the template sets (globally and per function)
    names = set(sam_template["Globals"]["Function"]["Environment"]["Variables"])
    for function in _of_type(sam_template, "AWS::Serverless::Function").values():
        names |= set(function["Properties"].get("Environment", {}).get("Variables", {}))

    # When compared with the names loraforge.settings reads
    unread = {name for name in names if not name.startswith("POWERTOOLS_")} - set(SETTINGS_ENV.values())

    # Then every one is read by the code (a typo here would silently fall back to a default)
    assert unread == set()


def test_layer_ships_the_package_and_pins_the_project_dependencies(sam_template: dict[str, Any]) -> None:
    # Given the layer's ContentUri (sam build copies it into the layer's python/ folder)
    layer = sam_template["Resources"]["CommonLayer"]
    content = REPO / layer["Properties"]["ContentUri"]

    # When its contents and requirements are read
    requirements = {line.strip() for line in (content / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")}
    project = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])

    # Then /opt/python/loraforge exists at runtime, built for arm64, with the project's pins (boto3 is in the runtime)
    assert (content / "loraforge" / "__init__.py").is_file()
    assert layer["Metadata"] == {"BuildMethod": "python3.12", "BuildArchitecture": "arm64"}
    assert requirements == {dep for dep in project if not dep.startswith("boto3")}


# ---------------------------------------------------------------------------------------------------
# Event sources
# ---------------------------------------------------------------------------------------------------
def test_stream_mappings_filter_report_failures_and_keep_failed_records(translated: dict[str, Any]) -> None:
    # Given every DynamoDB stream event source mapping
    mappings = {
        name: m["Properties"]
        for name, m in _of_type(translated, "AWS::Lambda::EventSourceMapping").items()
        if m["Properties"]["EventSourceArn"] == {"Fn::GetAtt": ["JobsTable", "StreamArn"]}
    }

    # When their filters, failure handling and batch semantics are read
    patterns = {name: [json.loads(f["Pattern"]) for f in m["FilterCriteria"]["Filters"]] for name, m in mappings.items()}
    on_failure = {name: m["DestinationConfig"]["OnFailure"]["Destination"] for name, m in mappings.items()}

    # Then both consumers filter (with valid JSON), send failed batches to their own queue and report item failures
    assert set(mappings) == {"DispatchFunctionJobQueued", "NotifyFunctionStatusChanged"}
    assert all(patterns.values())
    assert on_failure == {
        "DispatchFunctionJobQueued": {"Fn::GetAtt": ["DispatchFailureQueue", "Arn"]},
        "NotifyFunctionStatusChanged": {"Fn::GetAtt": ["NotifyFailureQueue", "Arn"]},
    }
    assert all(m["FunctionResponseTypes"] == ["ReportBatchItemFailures"] and m["BisectBatchOnFunctionError"] for m in mappings.values())


def _dispatch_matches(pattern: dict[str, Any], record: dict[str, Any]) -> bool:
    return EventPattern.load(json.dumps(pattern)).matches_event(record)


def test_dispatch_filter_takes_queued_jobs_only() -> None:
    # Given the dispatch filter and stream records for a job in several states
    (pattern,) = lambda_event_source_filters(TEMPLATE)["DispatchFunction"]
    inserted = load_event("dynamodb_stream_job_queued")["Records"][0]
    succeeded = load_event("dynamodb_stream_job_succeeded")["Records"][0]
    running = copy.deepcopy(succeeded)
    running["dynamodb"]["NewImage"] = copy.deepcopy(succeeded["dynamodb"]["OldImage"])
    requeued = copy.deepcopy(running)
    requeued["dynamodb"]["NewImage"]["status"] = {"S": "queued"}
    event_item = copy.deepcopy(inserted)
    event_item["dynamodb"]["NewImage"]["sk"] = {"S": "EVT#000000000001"}

    # When each record is matched
    matched = {
        name: _dispatch_matches(pattern, r)
        for name, r in {"inserted": inserted, "requeued": requeued, "running": running, "event_item": event_item}.items()
    }

    # Then a new queued job and a job re-queued for retry are dispatched; a running job and a job's event item are not
    assert matched == {"inserted": True, "requeued": True, "running": False, "event_item": False}


def test_notify_filter_takes_job_and_dataset_meta_items_and_new_checkpoints_only() -> None:
    # Given the notify filters (ORed) and records for a job, a dataset, a capacity counter, a job metric and a checkpoint
    patterns = lambda_event_source_filters(TEMPLATE)["NotifyFunction"]
    job = load_event("dynamodb_stream_job_succeeded")["Records"][0]
    dataset = copy.deepcopy(job)
    dataset["dynamodb"]["NewImage"]["pk"] = {"S": "DS#ds_01jd4m5a7b2c9e4f6g8h"}
    capacity = copy.deepcopy(job)
    capacity["dynamodb"]["NewImage"] = {"pk": {"S": "CAP#global"}, "sk": {"S": "META"}, "holders": {"SS": ["job_01jd4m7q2x8k3v5n9c6h"]}}
    metric = copy.deepcopy(job)
    metric["dynamodb"]["NewImage"]["sk"] = {"S": "MET#000002000"}
    removed = copy.deepcopy(job)
    removed["eventName"] = "REMOVE"
    checkpoint = load_event("dynamodb_stream_checkpoint_notify")["Records"][0]
    sample = copy.deepcopy(checkpoint)
    sample["dynamodb"]["Keys"]["sk"] = sample["dynamodb"]["NewImage"]["sk"] = {"S": "ART#sample#000000010#a.jpg"}
    records = {"job": job, "dataset": dataset, "capacity": capacity, "metric": metric, "removed": removed,
               "checkpoint": checkpoint, "sample": sample}

    # When each record is matched against any of the filters
    matched = {name: any(_dispatch_matches(p, r) for p in patterns) for name, r in records.items()}

    # Then only job and dataset META changes and new checkpoints reach notify (a TTL removal never does)
    assert matched == {"job": True, "dataset": True, "capacity": False, "metric": False, "removed": False,
                       "checkpoint": True, "sample": False}


def test_ingest_rule_retries_then_dead_letters(translated: dict[str, Any]) -> None:
    # Given the EventBridge rule that feeds ingest and the policy on its dead-letter queue
    rule = translated["Resources"]["IngestFunctionObjectCreated"]["Properties"]
    (target,) = rule["Targets"]
    dlq_policy = translated["Resources"]["IngestDLQPolicy"]["Properties"]

    # When its pattern, retry policy and dead-letter config are read
    (statement,) = _statements(dlq_policy["PolicyDocument"])

    # Then S3 Object Created events for incoming/ and datasets/ are retried, then kept in IngestDLQ, which EventBridge may write
    assert rule["EventPattern"]["detail"]["object"]["key"] == [{"prefix": "incoming/"}, {"prefix": "datasets/"}]
    assert rule["EventPattern"]["detail-type"] == ["Object Created"]
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 4, "MaximumEventAgeInSeconds": 3600}
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["IngestDLQ", "Arn"]}}
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == {"Fn::GetAtt": ["IngestFunctionObjectCreated", "Arn"]}


def test_reconcile_schedule_retries_then_dead_letters(translated: dict[str, Any]) -> None:
    # Given the scheduler schedule that runs reconcile
    schedule = translated["Resources"]["ReconcileFunctionSchedule"]["Properties"]

    # When its expression, target input and failure handling are read
    target = schedule["Target"]

    # Then it runs at the ReconcileRate, sends an EventBridge-shaped event, and keeps failures in ReconcileDLQ
    assert schedule["ScheduleExpression"] == {"Ref": "ReconcileRate"}
    assert "Name" not in schedule
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["ReconcileDLQ", "Arn"]}}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    assert json.loads(target["Input"]["Fn::Sub"])["detail-type"] == "Scheduled Event"


def test_asynchronously_invoked_functions_record_their_failed_invocations(translated: dict[str, Any]) -> None:
    # Given every function that EventBridge rules and Scheduler schedules invoke (asynchronously: a rule's or schedule's
    # RetryPolicy and DeadLetterConfig only cover events they could not hand to Lambda, never an invocation that raised)
    resources = translated["Resources"]
    targets = [t for rule in _of_type(translated, "AWS::Events::Rule").values() for t in rule["Properties"]["Targets"]]
    targets += [s["Properties"]["Target"] for s in _of_type(translated, "AWS::Scheduler::Schedule").values()]
    invoked = {t["Arn"]["Fn::GetAtt"][0] for t in targets if resources[t["Arn"]["Fn::GetAtt"][0]]["Type"] == "AWS::Lambda::Function"}

    # When each one's Lambda async invoke config (retries of a failed invocation, where it goes after) is read
    configs = {c["Properties"]["FunctionName"]["Ref"]: c["Properties"] for c in _of_type(translated, "AWS::Lambda::EventInvokeConfig").values()}
    on_failure = {name: configs.get(name, {}).get("DestinationConfig", {}).get("OnFailure", {}).get("Destination") for name in invoked}

    # Then an invocation that raised (or timed out) ends in that function's dead-letter queue, not only in its log
    assert on_failure == {
        "IngestFunction": {"Fn::GetAtt": ["IngestDLQ", "Arn"]},
        "ReconcileFunction": {"Fn::GetAtt": ["ReconcileDLQ", "Arn"]},
    }
    # and reconcile is not retried by Lambda on top of its schedule: the next run is the retry (no overlapping runs)
    assert configs["ReconcileFunction"]["MaximumRetryAttempts"] == 0


def test_webhook_queue_outlasts_the_delivery_function_and_redrives(translated: dict[str, Any]) -> None:
    # Given the webhook delivery queue and the function that consumes it
    queue = translated["Resources"]["WebhookDeliveryQueue"]["Properties"]
    function = translated["Resources"]["WebhookDeliveryFunction"]["Properties"]
    mapping = translated["Resources"]["WebhookDeliveryFunctionDelivery"]["Properties"]

    # When the visibility timeout is compared with the function timeout
    ratio = queue["VisibilityTimeout"] / function["Timeout"]

    # Then a message is never redelivered while being processed, and gives up to the DLQ after 8 receives
    assert ratio >= 6
    assert queue["RedrivePolicy"] == {"deadLetterTargetArn": {"Fn::GetAtt": ["WebhookDeliveryDLQ", "Arn"]}, "maxReceiveCount": 8}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_every_queue_is_encrypted(translated: dict[str, Any]) -> None:
    # Given every queue
    queues = _of_type(translated, "AWS::SQS::Queue")

    # When its encryption setting is read
    unencrypted = [name for name, q in queues.items() if q["Properties"].get("SqsManagedSseEnabled") is not True]

    # Then all use SQS-managed SSE
    assert unencrypted == []


# ---------------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------------
def test_only_the_hooks_and_the_openapi_document_skip_the_jwt_authorizer(translated: dict[str, Any]) -> None:
    # Given the generated OpenAPI body of the HTTP API
    body = translated["Resources"]["HttpApi"]["Properties"]["Body"]

    # When each route's security is read
    security = {f"{method} {path}": operation.get("security") for path, item in body["paths"].items() for method, operation in item.items()}

    # Then RunPod, the worker and the schema are public (verified by HMAC in the handler), everything else needs a JWT
    assert security == {
        "x-amazon-apigateway-any-method /v1/{proxy+}": [{"JwtAuthorizer": []}],
        "post /v1/hooks/runpod/{job}/{token}": [{"NONE": []}],
        "post /v1/hooks/worker/{job}": [{"NONE": []}],
        "x-amazon-apigateway-any-method /openapi.json": [{"NONE": []}],
        "options /v1/{proxy+}": [{"NONE": []}],
    }
    jwt = body["components"]["securitySchemes"]["JwtAuthorizer"]["x-amazon-apigateway-authorizer"]
    assert jwt["type"] == "jwt" and jwt["identitySource"] == "$request.header.Authorization"


def test_a_browser_preflight_never_meets_the_jwt_authorizer(translated: dict[str, Any]) -> None:
    # Given the generated OpenAPI body: an ANY route also takes OPTIONS, and API Gateway answers a CORS preflight by
    # itself only when no route takes OPTIONS on that path (AWS: "Configuring CORS for an HTTP API with a $default
    # route and an authorizer"); a browser never sends a token on a preflight
    paths = translated["Resources"]["HttpApi"]["Properties"]["Body"]["paths"]

    # When the paths whose ANY route needs a JWT are paired with the route that takes their OPTIONS requests
    any_routes = {path: item["x-amazon-apigateway-any-method"] for path, item in paths.items() if "x-amazon-apigateway-any-method" in item}
    guarded = [path for path, operation in any_routes.items() if operation.get("security") != [{"NONE": []}]]
    preflight_security = {path: paths[path].get("options", {}).get("security") for path in guarded}

    # Then each has an OPTIONS route without an authorizer, so a preflight gets its CORS answer rather than a 401
    assert guarded == ["/v1/{proxy+}"]
    assert preflight_security == {"/v1/{proxy+}": [{"NONE": []}]}


def test_cors_allows_the_methods_the_api_documents_and_the_headers_it_reads(sam_template: dict[str, Any]) -> None:
    # Given the HTTP API's CORS settings and the committed OpenAPI document
    cors = sam_template["Resources"]["HttpApi"]["Properties"]["CorsConfiguration"]
    documented = {method.upper() for item in json.loads((REPO / "openapi.json").read_text())["paths"].values() for method in item}

    # When a browser asks which methods and headers it may send
    # Then it is offered exactly the documented methods (a preflight for anything else would end in a 405) and the headers routes read
    assert set(cors["AllowMethods"]) == documented | {"OPTIONS"}
    assert {"Authorization", "Content-Type", "Idempotency-Key"} <= set(cors["AllowHeaders"])

# ---------------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------------
def test_bucket_is_private_encrypted_versioned_and_tls_only(translated: dict[str, Any]) -> None:
    # Given the data bucket and its policy
    bucket = translated["Resources"]["DataBucket"]["Properties"]
    policy = translated["Resources"]["DataBucketPolicy"]["Properties"]["PolicyDocument"]

    # When the protections are read
    deny_plain_http = [
        s
        for s in _statements(policy)
        if s["Effect"] == "Deny" and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") in ("false", False)
    ]
    lifecycle = {rule["Id"]: rule for rule in bucket["LifecycleConfiguration"]["Rules"]}

    # Then public access is blocked four ways, objects are encrypted and versioned, and plain HTTP is refused
    assert bucket["PublicAccessBlockConfiguration"] == dict.fromkeys(
        ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True
    )
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in (
        "AES256",
        "aws:kms",
    )
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert bucket["NotificationConfiguration"] == {"EventBridgeConfiguration": {"EventBridgeEnabled": True}}
    assert len(deny_plain_http) == 1 and len(_as_list(deny_plain_http[0]["Resource"])) == 2
    assert lifecycle["expire-tmp"]["Prefix"] == "tmp/" and lifecycle["expire-tmp"]["ExpirationInDays"] == 1
    assert lifecycle["abort-incomplete-multipart"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert lifecycle["expire-noncurrent-versions"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert "POST" in bucket["CorsConfiguration"]["CorsRules"][0]["AllowedMethods"]


def test_table_has_the_dal_keys_indexes_stream_and_ttl(translated: dict[str, Any]) -> None:
    # Given the jobs table
    table = translated["Resources"]["JobsTable"]["Properties"]

    # When its keys and indexes are read
    keys = {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]}
    indexes = {
        index["IndexName"]: ({k["AttributeName"]: k["KeyType"] for k in index["KeySchema"]}, index["Projection"]["ProjectionType"])
        for index in table["GlobalSecondaryIndexes"]
    }

    # Then they are the layout loraforge.dal.jobs_table uses, with the stream, TTL and PITR on
    assert keys == {"pk": "HASH", "sk": "RANGE"}
    assert indexes == {"gsi1": ({"gsi1pk": "HASH", "gsi1sk": "RANGE"}, "ALL"), "gsi2": ({"gsi2pk": "HASH", "gsi2sk": "RANGE"}, "ALL")}
    assert {a["AttributeType"] for a in table["AttributeDefinitions"]} == {"S"}
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


def test_signing_key_is_generated_by_secrets_manager(translated: dict[str, Any]) -> None:
    # Given the signing key secret
    secret = translated["Resources"]["SigningKeySecret"]["Properties"]

    # When its generation rule is read
    rule = secret["GenerateSecretString"]

    # Then Secrets Manager generates a 64-character key without punctuation, and the template never holds a value
    assert rule == {"PasswordLength": 64, "ExcludePunctuation": True}
    assert "SecretString" not in secret


def test_every_stack_output_the_docs_read_exists(sam_template: dict[str, Any]) -> None:
    # Given the docs' shell snippets that read stack outputs (`$(out Name)` or `OutputKey=='Name'`)
    pages = [REPO / "README.md", *(REPO / "docs").glob("*.md")]
    matches = [m for page in pages for m in re.findall(r"\$\(out (\w+)\)|OutputKey=='(\w+)'", page.read_text())]
    named = {name for match in matches for name in match if name}

    # When they are compared with the template's Outputs
    # Then each one exists (the webhook redrive needs both queue ARNs)
    assert {"WebhookDeliveryDLQArn", "WebhookDeliveryQueueArn", "ApiUrl", "UserPoolId", "UserPoolClientId"} <= named
    assert named <= set(sam_template["Outputs"])
