"""Create the template's data resources (bucket, table, topic, queues, secrets) on moto, from template.yaml itself.

The local stack and the tests must not keep a second description of the infrastructure: a GSI, a
stream view type, a TTL attribute or a redrive policy that exists only in template.yaml would
otherwise drift from what the code is tested against. So this module reads template.yaml, keeps
the data resources, resolves the few intrinsics they use and creates them with boto3.

Why boto3 calls and not CloudFormation `create_stack` on moto: moto's CloudFormation applies only
encryption and tags to an S3 bucket (no versioning, lifecycle, CORS, public-access block or
EventBridge notifications), ignores TTL and skips `AWS::SecretsManager::Secret`. Direct calls
honour every property the template sets, and any property this module does not know raises
`UnsupportedTemplateFeature` instead of being dropped silently. The one deliberate difference: on a
plain-HTTP endpoint (moto server on loopback) the bucket policy's TLS-only deny is left out, because
moto enforces it and no request over http:// could pass.

Dev-only: never imported by Lambda code (it imports aws-sam-translator).
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

STACK_NAME = "loraforge-local"
ACCOUNT_ID_FALLBACK = "123456789012"
RUNPOD_LOCAL_API_KEY = "local-runpod-key"

# Logical ids the rest of the code base knows about (DESIGN §5, template.yaml).
BUCKET_ID = "DataBucket"
TABLE_ID = "JobsTable"
TOPIC_ID = "NotificationsTopic"
SIGNING_SECRET_ID = "SigningKeySecret"
WEBHOOK_QUEUE_ID = "WebhookDeliveryQueue"
RUNPOD_SECRET_PARAMETER = "RunPodApiKeySecretArn"
# Function variables whose template value names a resource with no local counterpart (the HTTP API's URL):
# the local stack sets them itself (stack.py). Any other variable that cannot be resolved is an error.
LOCALLY_SUPPLIED_VARIABLES = frozenset({"PUBLIC_API_URL"})

# Types created locally. Everything else (functions, the API, IAM, Cognito, log groups, queue policies that
# name SAM-generated rules) has no local counterpart: the local stack calls the handlers itself.
DATA_TYPES = frozenset(
    {
        "AWS::S3::Bucket",
        "AWS::S3::BucketPolicy",
        "AWS::DynamoDB::Table",
        "AWS::SNS::Topic",
        "AWS::SNS::Subscription",
        "AWS::SQS::Queue",
        "AWS::SecretsManager::Secret",
    }
)


def _default_template_path() -> Path:
    """template.yaml at the repository root (this file sits at layers/common/python/loraforge/local/)."""
    override = os.environ.get("LORAFORGE_TEMPLATE")
    if override:
        return Path(override)
    repo_template = Path(__file__).resolve().parents[5] / "template.yaml"
    return repo_template if repo_template.exists() else Path.cwd() / "template.yaml"


DEFAULT_TEMPLATE = _default_template_path()


class UnsupportedTemplateFeature(ValueError):
    """template.yaml uses something this loader cannot reproduce locally; extend the loader rather than ignore it."""


@dataclass(frozen=True)
class StackResources:
    """Physical names of the locally created resources, keyed like the template."""

    bucket: str
    table: str
    table_stream_arn: str
    topic_arn: str
    queues: Mapping[str, str] = field(repr=False)
    """Queue logical id -> queue URL."""
    queue_arns: Mapping[str, str] = field(repr=False)
    """Queue logical id -> queue ARN."""
    signing_secret_arn: str
    runpod_secret_arn: str
    region: str
    endpoint_url: str | None
    environment: Mapping[str, str] = field(repr=False)
    """template Globals.Function.Environment.Variables, resolved against these resources."""
    function_environments: Mapping[str, Mapping[str, str]] = field(default_factory=dict, repr=False)
    """Function logical id -> its own Environment.Variables (SAM merges them over Globals), resolved; the
    LOCALLY_SUPPLIED_VARIABLES are left out."""

    def env(self) -> dict[str, str]:
        """The Lambda environment: the template's Globals variables and every function's own ones (the local functions
        share one process), plus the region and the moto endpoint."""
        values = _one_process_environment(self.environment, self.function_environments)
        values["AWS_REGION"] = self.region
        values["AWS_DEFAULT_REGION"] = self.region
        if self.endpoint_url:
            values["AWS_ENDPOINT_URL"] = self.endpoint_url
        return values


# -------------------------------------------------------------------------------------------------
# Template reading
# -------------------------------------------------------------------------------------------------
def load_template(template_path: Path | str = DEFAULT_TEMPLATE) -> dict[str, Any]:
    """Parse template.yaml with SAM's loader (it understands !Ref, !Sub, !GetAtt ... short tags). A fresh copy each call."""
    path = Path(template_path).resolve()
    stat = path.stat()
    return copy.deepcopy(_parse_template(str(path), stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=8)
def _parse_template(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    # Pure-Python YAML takes ~0.1 s for this template; tests build a stack per test, so parse once per file version.
    from samtranslator.yaml_helper import yaml_parse

    return yaml_parse(Path(path).read_text())


def lambda_event_source_filters(template_path: Path | str = DEFAULT_TEMPLATE) -> dict[str, list[dict[str, Any]]]:
    """Function logical id -> its event sources' filter patterns, parsed (the local stream pump applies them).

    Covers SAM function events and plain `AWS::Lambda::EventSourceMapping` resources. A function whose
    event sources declare no FilterCriteria is absent: it receives every record.
    """
    resources = load_template(template_path).get("Resources", {})
    filters: dict[str, list[dict[str, Any]]] = {}
    for logical_id, resource in resources.items():
        props = resource.get("Properties") or {}
        if resource.get("Type") == "AWS::Serverless::Function":
            criteria = [(event.get("Properties") or {}).get("FilterCriteria") for event in (props.get("Events") or {}).values()]
            owner = logical_id
        elif resource.get("Type") == "AWS::Lambda::EventSourceMapping":
            function_ref = props.get("FunctionName")
            owner = function_ref["Ref"] if isinstance(function_ref, dict) and "Ref" in function_ref else str(function_ref)
            criteria = [props.get("FilterCriteria")]
        else:
            continue
        for criterion in criteria:
            for entry in (criterion or {}).get("Filters", []):
                filters.setdefault(owner, []).append(json.loads(entry["Pattern"]))
    return filters


# -------------------------------------------------------------------------------------------------
# Intrinsics
# -------------------------------------------------------------------------------------------------
class _NoValue:
    """AWS::NoValue: the property (or list item) disappears."""


NO_VALUE = _NoValue()
_SUB_VAR = re.compile(r"\$\{([^}!][^}]*)\}")


class _Resolver:
    """Resolves Ref / GetAtt / Sub / Join / Select / Split / If against parameters and already created resources."""

    def __init__(self, template: dict[str, Any], parameters: Mapping[str, str], pseudo: Mapping[str, str]) -> None:
        self.parameters = parameters
        self.pseudo = pseudo
        self.condition_defs: dict[str, Any] = template.get("Conditions") or {}
        self._conditions: dict[str, bool] = {}
        self.refs: dict[str, str] = {}
        self.attrs: dict[str, dict[str, str]] = {}

    # conditions
    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            if name not in self.condition_defs:
                raise UnsupportedTemplateFeature(f"unknown condition {name!r}")
            self._conditions[name] = self._evaluate(self.condition_defs[name])
        return self._conditions[name]

    def _evaluate(self, node: Any) -> bool:
        if isinstance(node, dict) and len(node) == 1:
            ((fn, args),) = node.items()
            if fn == "Condition":
                return self.condition(args)
            if fn == "Fn::Equals":
                left, right = (self.resolve(arg) for arg in args)
                return str(left) == str(right)
            if fn == "Fn::Not":
                return not self._evaluate(args[0])
            if fn == "Fn::And":
                return all(self._evaluate(arg) for arg in args)
            if fn == "Fn::Or":
                return any(self._evaluate(arg) for arg in args)
        raise UnsupportedTemplateFeature(f"unsupported condition expression {node!r}")

    # values
    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [value for value in (self.resolve(item) for item in node) if value is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, args),) = node.items()
            if key == "Ref":
                return self._ref(args)
            if key.startswith("Fn::"):
                return self._function(key, args)
        return {key: value for key, value in ((k, self.resolve(v)) for k, v in node.items()) if value is not NO_VALUE}

    def _function(self, name: str, args: Any) -> Any:
        if name == "Fn::GetAtt":
            logical_id, attribute = args.split(".", 1) if isinstance(args, str) else args
            return self._get_att(logical_id, attribute)
        if name == "Fn::Sub":
            return self._sub(args)
        if name == "Fn::Join":
            separator, items = args
            return separator.join(str(item) for item in self.resolve(items))
        if name == "Fn::Select":
            index, items = self.resolve(args)
            return items[int(index)]
        if name == "Fn::Split":
            separator, text = args
            return str(self.resolve(text)).split(separator)
        if name == "Fn::If":
            condition, when_true, when_false = args
            return self.resolve(when_true if self.condition(condition) else when_false)
        if name in ("Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or"):
            return self._evaluate({name: args})
        raise UnsupportedTemplateFeature(f"{name} is not supported by the local resource loader")

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.refs:
            return self.refs[name]
        raise UnsupportedTemplateFeature(f"Ref {name!r}: not a parameter or a locally created resource")

    def _get_att(self, logical_id: str, attribute: str) -> str:
        try:
            return self.attrs[logical_id][attribute]
        except KeyError:
            raise UnsupportedTemplateFeature(f"GetAtt {logical_id}.{attribute}: not available locally") from None

    def _sub(self, args: Any) -> str:
        text, variables = (args, {}) if isinstance(args, str) else (args[0], self.resolve(args[1]))

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return str(variables[name])
            if "." in name and name not in self.pseudo:
                return str(self._get_att(*name.split(".", 1)))
            return str(self._ref(name))

        # ${!Literal} renders as ${Literal}.
        return _SUB_VAR.sub(replace, text).replace("${!", "${")


def _references(node: Any) -> Iterator[str]:
    """Logical ids (or parameter names) a property tree refers to: used to order creation."""
    if isinstance(node, list):
        for item in node:
            yield from _references(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                yield value
            elif key == "Fn::GetAtt":
                yield (value.split(".", 1)[0] if isinstance(value, str) else value[0])
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                yield from (name.split(".", 1)[0] for name in _SUB_VAR.findall(text))
                if not isinstance(value, str):
                    yield from _references(value[1])
            else:
                yield from _references(value)


def _creation_order(resources: Mapping[str, dict[str, Any]]) -> list[str]:
    """Dependencies first (a redrive policy names its DLQ, a bucket policy its bucket)."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(logical_id: str) -> None:
        if state.get(logical_id) == "done":
            return
        if state.get(logical_id) == "visiting":
            raise UnsupportedTemplateFeature(f"circular reference through {logical_id}")
        state[logical_id] = "visiting"
        resource = resources[logical_id]
        depends_on = resource.get("DependsOn") or []
        for dependency in [*_references(resource.get("Properties") or {}), *([depends_on] if isinstance(depends_on, str) else depends_on)]:
            if dependency in resources and dependency != logical_id:
                visit(dependency)
        state[logical_id] = "done"
        order.append(logical_id)

    for logical_id in resources:
        visit(logical_id)
    return order


# -------------------------------------------------------------------------------------------------
# Creation, one function per resource type: (properties) -> (Ref value, GetAtt attributes)
# -------------------------------------------------------------------------------------------------
def _physical_name(stack_name: str, logical_id: str, max_length: int, lowercase: bool = False) -> str:
    """CloudFormation style `<stack>-<LogicalId>-<SUFFIX>`: never the same twice, like a real deployment."""
    suffix = secrets.token_hex(6).upper()
    head = f"{stack_name}-{logical_id}"[: max_length - len(suffix) - 1]
    name = f"{head}-{suffix}"
    return name.lower() if lowercase else name


def _check_keys(kind: str, logical_id: str, props: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(props) - known)
    if unknown:
        raise UnsupportedTemplateFeature(f"{logical_id} ({kind}): properties {unknown} are not reproduced locally")


def _tags(props: Mapping[str, Any]) -> list[dict[str, str]]:
    return [{"Key": str(tag["Key"]), "Value": str(tag["Value"])} for tag in props.get("Tags") or []]


@lru_cache(maxsize=64)
def _client(service: str, endpoint_url: str | None, region: str) -> Any:
    # Building a client re-reads botocore's service models (~30 ms each); tests create a stack per test.
    config = Config(s3={"addressing_style": "path"}) if service == "s3" else None
    return boto3.session.Session(region_name=region).client(service, endpoint_url=endpoint_url, region_name=region, config=config)


class _Creator:
    def __init__(self, endpoint_url: str | None, region: str, stack_name: str) -> None:
        self.region = region
        self.stack_name = stack_name
        self._endpoint_url = endpoint_url
        # Without an explicit endpoint boto3 reads AWS_ENDPOINT_URL when the client is built: key the cache on it.
        self._cache_endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        self.partition = "aws"

    def client(self, service: str) -> Any:
        return _client(service, self._cache_endpoint, self.region)

    def handler(self, resource_type: str) -> Callable[[str, dict[str, Any]], tuple[str, dict[str, str]]]:
        return {
            "AWS::S3::Bucket": self.bucket,
            "AWS::S3::BucketPolicy": self.bucket_policy,
            "AWS::DynamoDB::Table": self.table,
            "AWS::SNS::Topic": self.topic,
            "AWS::SNS::Subscription": self.subscription,
            "AWS::SQS::Queue": self.queue,
            "AWS::SecretsManager::Secret": self.secret,
        }[resource_type]

    # S3 ------------------------------------------------------------------------------------------
    def bucket(self, logical_id: str, props: dict[str, Any]) -> tuple[str, dict[str, str]]:
        _check_keys(
            "AWS::S3::Bucket",
            logical_id,
            props,
            {
                "BucketName",
                "NotificationConfiguration",
                "PublicAccessBlockConfiguration",
                "OwnershipControls",
                "BucketEncryption",
                "VersioningConfiguration",
                "LifecycleConfiguration",
                "CorsConfiguration",
                "Tags",
            },
        )
        s3 = self.client("s3")
        name = props.get("BucketName") or _physical_name(self.stack_name, logical_id, 63, lowercase=True)
        create: dict[str, Any] = {"Bucket": name}
        if self.region != "us-east-1":
            create["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        s3.create_bucket(**create)
        if "OwnershipControls" in props:
            s3.put_bucket_ownership_controls(Bucket=name, OwnershipControls={"Rules": props["OwnershipControls"]["Rules"]})
        if "PublicAccessBlockConfiguration" in props:
            s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"])
        if "BucketEncryption" in props:
            # CloudFormation says ServerSideEncryptionByDefault where the API says ApplyServerSideEncryptionByDefault.
            rules = [
                {("ApplyServerSideEncryptionByDefault" if key == "ServerSideEncryptionByDefault" else key): value for key, value in rule.items()}
                for rule in props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
            ]
            s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": rules})
        if "VersioningConfiguration" in props:
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": props["VersioningConfiguration"]["Status"]})
        if "LifecycleConfiguration" in props:
            rules = [_lifecycle_rule(logical_id, rule) for rule in props["LifecycleConfiguration"]["Rules"]]
            s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": rules})
        if "CorsConfiguration" in props:
            cors = [_cors_rule(rule) for rule in props["CorsConfiguration"]["CorsRules"]]
            s3.put_bucket_cors(Bucket=name, CORSConfiguration={"CORSRules": cors})
        if "NotificationConfiguration" in props:
            notification = props["NotificationConfiguration"]
            _check_keys("NotificationConfiguration", logical_id, notification, {"EventBridgeConfiguration"})
            if notification["EventBridgeConfiguration"].get("EventBridgeEnabled") in (True, "true"):
                s3.put_bucket_notification_configuration(Bucket=name, NotificationConfiguration={"EventBridgeConfiguration": {}})
        if props.get("Tags"):
            s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": _tags(props)})
        arn = f"arn:{self.partition}:s3:::{name}"
        return name, {
            "Arn": arn,
            "DomainName": f"{name}.s3.amazonaws.com",
            "RegionalDomainName": f"{name}.s3.{self.region}.amazonaws.com",
        }

    def bucket_policy(self, logical_id: str, props: dict[str, Any]) -> tuple[str, dict[str, str]]:
        _check_keys("AWS::S3::BucketPolicy", logical_id, props, {"Bucket", "PolicyDocument"})
        document = dict(props["PolicyDocument"])
        if self._endpoint_url and self._endpoint_url.startswith("http://"):
            # moto evaluates bucket policies, and a plain-HTTP loopback endpoint can never satisfy the
            # TLS-only deny: keep every other statement, drop that one.
            document["Statement"] = [statement for statement in document["Statement"] if not _denies_plain_http(statement)]
        if document["Statement"]:
            self.client("s3").put_bucket_policy(Bucket=props["Bucket"], Policy=json.dumps(document))
        return props["Bucket"], {}

    # DynamoDB ------------------------------------------------------------------------------------
    def table(self, logical_id: str, props: dict[str, Any]) -> tuple[str, dict[str, str]]:
        _check_keys(
            "AWS::DynamoDB::Table",
            logical_id,
            props,
            {
                "TableName",
                "BillingMode",
                "AttributeDefinitions",
                "KeySchema",
                "GlobalSecondaryIndexes",
                "LocalSecondaryIndexes",
                "ProvisionedThroughput",
                "StreamSpecification",
                "TimeToLiveSpecification",
                "PointInTimeRecoverySpecification",
                "SSESpecification",
                "DeletionProtectionEnabled",
                "Tags",
            },
        )
        ddb = self.client("dynamodb")
        name = props.get("TableName") or _physical_name(self.stack_name, logical_id, 255)
        create: dict[str, Any] = {
            "TableName": name,
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
            "BillingMode": props.get("BillingMode", "PROVISIONED"),
        }
        for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
            if props.get(key):
                create[key] = [
                    {k: v for k, v in index.items() if k in ("IndexName", "KeySchema", "Projection", "ProvisionedThroughput")} for index in props[key]
                ]
        if "ProvisionedThroughput" in props:
            create["ProvisionedThroughput"] = props["ProvisionedThroughput"]
        if "StreamSpecification" in props:
            create["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": props["StreamSpecification"]["StreamViewType"]}
        if "SSESpecification" in props:
            create["SSESpecification"] = {"Enabled": props["SSESpecification"].get("SSEEnabled", False) in (True, "true")}
        if props.get("Tags"):
            create["Tags"] = _tags(props)
        description = ddb.create_table(**create)["TableDescription"]
        ttl = props.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled") in (True, "true"):
            ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True})
        pitr = props.get("PointInTimeRecoverySpecification")
        if pitr and pitr.get("PointInTimeRecoveryEnabled") in (True, "true"):
            ddb.update_continuous_backups(TableName=name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
        attrs = {"Arn": description["TableArn"]}
        if "LatestStreamArn" in description:
            attrs["StreamArn"] = description["LatestStreamArn"]
        return name, attrs

    # SNS -----------------------------------------------------------------------------------------
    def topic(self, logical_id: str, props: dict[str, Any]) -> tuple[str, dict[str, str]]:
        _check_keys(
            "AWS::SNS::Topic",
            logical_id,
            props,
            {"TopicName", "DisplayName", "Subscription", "KmsMasterKeyId", "FifoTopic", "ContentBasedDeduplication", "Tags"},
        )
        sns = self.client("sns")
        fifo = props.get("FifoTopic") in (True, "true")
        name = props.get("TopicName") or _physical_name(self.stack_name, logical_id, 251 if fifo else 256) + (".fifo" if fifo else "")
        attributes = {
            key: _attribute(props[key]) for key in ("DisplayName", "KmsMasterKeyId", "FifoTopic", "ContentBasedDeduplication") if key in props
        }
        create: dict[str, Any] = {"Name": name, "Attributes": attributes}
        if props.get("Tags"):
            create["Tags"] = _tags(props)
        arn = sns.create_topic(**create)["TopicArn"]
        for subscription in props.get("Subscription") or []:
            sns.subscribe(TopicArn=arn, Protocol=subscription["Protocol"], Endpoint=subscription["Endpoint"])
        return arn, {"TopicArn": arn, "TopicName": name}

    def subscription(self, logical_id: str, props: dict[str, Any]) -> tuple[str, dict[str, str]]:
        _check_keys(
            "AWS::SNS::Subscription",
            logical_id,
            props,
            {"TopicArn", "Protocol", "Endpoint", "FilterPolicy", "FilterPolicyScope", "RawMessageDelivery", "RedrivePolicy", "Region"},
        )
        attributes = {
            key: _attribute(props[key]) for key in ("FilterPolicy", "FilterPolicyScope", "RawMessageDelivery", "RedrivePolicy") if key in props
        }
        arn = self.client("sns").subscribe(
            TopicArn=props["TopicArn"], Protocol=props["Protocol"], Endpoint=props["Endpoint"], Attributes=attributes, ReturnSubscriptionArn=True
        )["SubscriptionArn"]
        return arn, {}

    # SQS -----------------------------------------------------------------------------------------
    _QUEUE_ATTRIBUTES = (
        "DelaySeconds",
        "MaximumMessageSize",
        "MessageRetentionPeriod",
        "ReceiveMessageWaitTimeSeconds",
        "VisibilityTimeout",
        "RedrivePolicy",
        "RedriveAllowPolicy",
        "SqsManagedSseEnabled",
        "KmsMasterKeyId",
        "KmsDataKeyReusePeriodSeconds",
        "FifoQueue",
        "ContentBasedDeduplication",
        "DeduplicationScope",
        "FifoThroughputLimit",
    )

    def queue(self, logical_id: str, props: dict[str, Any]) -> tuple[str, dict[str, str]]:
        _check_keys("AWS::SQS::Queue", logical_id, props, {"QueueName", "Tags", *self._QUEUE_ATTRIBUTES})
        sqs = self.client("sqs")
        fifo = props.get("FifoQueue") in (True, "true")
        name = props.get("QueueName") or _physical_name(self.stack_name, logical_id, 75 if fifo else 80) + (".fifo" if fifo else "")
        attributes = {key: _attribute(props[key]) for key in self._QUEUE_ATTRIBUTES if key in props}
        create: dict[str, Any] = {"QueueName": name, "Attributes": attributes}
        if props.get("Tags"):
            create["tags"] = {tag["Key"]: tag["Value"] for tag in _tags(props)}
        url = sqs.create_queue(**create)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return url, {"Arn": arn, "QueueName": name, "QueueUrl": url}

    # Secrets Manager -----------------------------------------------------------------------------
    _PASSWORD_OPTIONS = (
        "PasswordLength",
        "ExcludeCharacters",
        "ExcludeNumbers",
        "ExcludePunctuation",
        "ExcludeUppercase",
        "ExcludeLowercase",
        "IncludeSpace",
        "RequireEachIncludedType",
    )

    def secret(self, logical_id: str, props: dict[str, Any]) -> tuple[str, dict[str, str]]:
        _check_keys(
            "AWS::SecretsManager::Secret", logical_id, props, {"Name", "Description", "SecretString", "GenerateSecretString", "KmsKeyId", "Tags"}
        )
        sm = self.client("secretsmanager")
        name = props.get("Name") or _physical_name(self.stack_name, logical_id, 512)
        if "GenerateSecretString" in props:
            spec = props["GenerateSecretString"]
            _check_keys("GenerateSecretString", logical_id, spec, {*self._PASSWORD_OPTIONS, "SecretStringTemplate", "GenerateStringKey"})
            # Secrets Manager's own generator takes the same options as GenerateSecretString.
            options = {key: spec[key] for key in self._PASSWORD_OPTIONS if key in spec}
            if "PasswordLength" in options:
                options["PasswordLength"] = int(options["PasswordLength"])
            password = sm.get_random_password(**options)["RandomPassword"]
            if "SecretStringTemplate" in spec:
                value = json.dumps({**json.loads(spec["SecretStringTemplate"]), spec["GenerateStringKey"]: password})
            else:
                value = password
        else:
            value = props["SecretString"]
        create: dict[str, Any] = {"Name": name, "SecretString": value}
        if "Description" in props:
            create["Description"] = props["Description"]
        if props.get("Tags"):
            create["Tags"] = _tags(props)
        arn = sm.create_secret(**create)["ARN"]
        return arn, {"Id": arn}


def _attribute(value: Any) -> str:
    """SQS/SNS attributes are strings; CFN lets policies be objects and flags be booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _denies_plain_http(statement: Mapping[str, Any]) -> bool:
    condition = statement.get("Condition") or {}
    return statement.get("Effect") == "Deny" and str((condition.get("Bool") or {}).get("aws:SecureTransport", "")).lower() == "false"


def _lifecycle_rule(logical_id: str, rule: Mapping[str, Any]) -> dict[str, Any]:
    """CloudFormation's flat lifecycle rule -> the S3 API's nested one."""
    _check_keys(
        "LifecycleConfiguration.Rules",
        logical_id,
        rule,
        {
            "Id",
            "Status",
            "Prefix",
            "ExpirationInDays",
            "ExpiredObjectDeleteMarker",
            "NoncurrentVersionExpiration",
            "NoncurrentVersionExpirationInDays",
            "AbortIncompleteMultipartUpload",
        },
    )
    out: dict[str, Any] = {"Status": rule["Status"], "Filter": {"Prefix": rule.get("Prefix", "")}}
    if "Id" in rule:
        out["ID"] = rule["Id"]
    expiration: dict[str, Any] = {}
    if "ExpirationInDays" in rule:
        expiration["Days"] = int(rule["ExpirationInDays"])
    if "ExpiredObjectDeleteMarker" in rule:
        expiration["ExpiredObjectDeleteMarker"] = rule["ExpiredObjectDeleteMarker"] in (True, "true")
    if expiration:
        out["Expiration"] = expiration
    if "NoncurrentVersionExpiration" in rule:
        out["NoncurrentVersionExpiration"] = {key: int(value) for key, value in rule["NoncurrentVersionExpiration"].items()}
    elif "NoncurrentVersionExpirationInDays" in rule:
        out["NoncurrentVersionExpiration"] = {"NoncurrentDays": int(rule["NoncurrentVersionExpirationInDays"])}
    if "AbortIncompleteMultipartUpload" in rule:
        out["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": int(rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])}
    return out


def _cors_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    renames = {"ExposedHeaders": "ExposeHeaders", "MaxAge": "MaxAgeSeconds", "Id": "ID"}
    return {renames.get(key, key): (int(value) if key == "MaxAge" else value) for key, value in rule.items()}


# -------------------------------------------------------------------------------------------------
# Entry point
# -------------------------------------------------------------------------------------------------
def create_resources_from_template(
    endpoint_url: str | None = None,
    template_path: Path | str = DEFAULT_TEMPLATE,
    region: str = "us-east-1",
    *,
    parameter_overrides: Mapping[str, str] | None = None,
    stack_name: str = STACK_NAME,
) -> StackResources:
    """Create the template's data resources on `endpoint_url` (a moto server; None: boto3's default endpoint,
    e.g. inside `moto.mock_aws`) and return their names and the Lambda environment.

    `parameter_overrides` replaces template parameter defaults (e.g. RunPodBaseUrl for an emulator).
    `RunPodApiKeySecretArn` defaults to a secret created here whose value is `local-runpod-key`.
    """
    template = load_template(template_path)
    creator = _Creator(endpoint_url, region, stack_name)

    # The user creates the RunPod key secret before deploying; locally it is created here.
    runpod_secret_arn = creator.client("secretsmanager").create_secret(Name=f"{stack_name}/runpod-api-key", SecretString=RUNPOD_LOCAL_API_KEY)["ARN"]
    parameters = _parameters(template, {RUNPOD_SECRET_PARAMETER: runpod_secret_arn, **(parameter_overrides or {})})
    account_id = _account_id(creator)
    pseudo = {
        "AWS::StackName": stack_name,
        "AWS::StackId": f"arn:aws:cloudformation:{region}:{account_id}:stack/{stack_name}/local",
        "AWS::Region": region,
        "AWS::AccountId": account_id,
        "AWS::Partition": creator.partition,
        "AWS::URLSuffix": "amazonaws.com",
    }
    resolver = _Resolver(template, parameters, pseudo)

    resources = {
        logical_id: resource
        for logical_id, resource in (template.get("Resources") or {}).items()
        if resource.get("Type") in DATA_TYPES and ("Condition" not in resource or resolver.condition(resource["Condition"]))
    }
    for logical_id in _creation_order(resources):
        resource = resources[logical_id]
        props = resolver.resolve(resource.get("Properties") or {})
        ref, attrs = creator.handler(resource["Type"])(logical_id, props)
        resolver.refs[logical_id] = ref
        resolver.attrs[logical_id] = attrs

    variables = ((template.get("Globals") or {}).get("Function") or {}).get("Environment", {}).get("Variables", {})
    environment = {name: str(resolver.resolve(value)) for name, value in variables.items()}
    function_environments = _function_environments(template, resolver)
    _one_process_environment(environment, function_environments)  # refuse now what one process cannot reproduce
    queues = {logical_id: resolver.refs[logical_id] for logical_id, resource in resources.items() if resource["Type"] == "AWS::SQS::Queue"}
    queue_arns = {logical_id: resolver.attrs[logical_id]["Arn"] for logical_id in queues}
    missing = [logical_id for logical_id in (BUCKET_ID, TABLE_ID, TOPIC_ID, SIGNING_SECRET_ID, WEBHOOK_QUEUE_ID) if logical_id not in resolver.refs]
    if missing:
        raise UnsupportedTemplateFeature(f"template.yaml no longer defines {missing}; update loraforge.local.aws_resources")
    return StackResources(
        bucket=resolver.refs[BUCKET_ID],
        table=resolver.refs[TABLE_ID],
        table_stream_arn=resolver.attrs[TABLE_ID]["StreamArn"],
        topic_arn=resolver.refs[TOPIC_ID],
        queues=queues,
        queue_arns=queue_arns,
        signing_secret_arn=resolver.refs[SIGNING_SECRET_ID],
        runpod_secret_arn=runpod_secret_arn,
        region=region,
        endpoint_url=endpoint_url,
        environment=environment,
        function_environments=function_environments,
    )


def _function_environments(template: Mapping[str, Any], resolver: _Resolver) -> dict[str, dict[str, str]]:
    """Each function's own variables, resolved like the Globals ones (`!Ref SomeParameter` -> its value)."""
    environments: dict[str, dict[str, str]] = {}
    for logical_id, resource in (template.get("Resources") or {}).items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        variables = (((resource.get("Properties") or {}).get("Environment") or {}).get("Variables")) or {}
        environments[logical_id] = {
            name: str(resolver.resolve(value)) for name, value in variables.items() if name not in LOCALLY_SUPPLIED_VARIABLES
        }
    return environments


def _one_process_environment(globals_env: Mapping[str, str], function_envs: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The local functions run in one process, so they share one environment: the Globals plus every function's own
    variables. A variable two functions (or a function and the Globals) set differently cannot be reproduced."""
    merged = dict(globals_env)
    for logical_id, variables in function_envs.items():
        for name, value in variables.items():
            if merged.get(name, value) != value:
                raise UnsupportedTemplateFeature(
                    f"{logical_id} sets {name}={value!r} but another function or the Globals set {merged[name]!r}: "
                    "the local functions share one environment"
                )
            merged[name] = value
    return merged


def parameters_from_environment(template: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Number parameters (the operational limits) whose function variable is set in `environ`, by parameter name.

    The local counterpart of `sam deploy --parameter-overrides`: `MAX_AUTO_RETRIES=0 loraforge local up` sets
    MaxAutoRetries, which then reaches every function that reads it and is range-checked like a deployment.
    """
    declared = template.get("Parameters") or {}
    environments = [((template.get("Globals") or {}).get("Function") or {}).get("Environment", {}).get("Variables", {})]
    environments += [
        (((resource.get("Properties") or {}).get("Environment") or {}).get("Variables")) or {}
        for resource in (template.get("Resources") or {}).values()
        if resource.get("Type") == "AWS::Serverless::Function"
    ]
    overrides: dict[str, str] = {}
    for variables in environments:
        for variable, value in variables.items():
            name = value.get("Ref") if isinstance(value, dict) and len(value) == 1 else None
            if name in declared and declared[name].get("Type") == "Number" and environ.get(variable):
                overrides[name] = environ[variable]
    return overrides


def _parameters(template: Mapping[str, Any], overrides: Mapping[str, str]) -> dict[str, str]:
    declared = template.get("Parameters") or {}
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise ValueError(f"unknown template parameters: {unknown}")
    values = {name: str(spec["Default"]) for name, spec in declared.items() if "Default" in spec}
    values.update({name: str(value) for name, value in overrides.items()})
    absent = sorted(set(declared) - set(values))
    if absent:
        raise ValueError(f"template parameters without a default need a value: {absent}")
    for name, spec in declared.items():
        if spec.get("Type") == "Number":
            _check_number(name, values[name], spec)
    return values


def _check_number(name: str, value: str, spec: Mapping[str, Any]) -> None:
    """What CloudFormation checks for a Number parameter before it deploys anything."""
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"template parameter {name}={value!r} is not a number") from None
    low, high = spec.get("MinValue"), spec.get("MaxValue")
    if (low is not None and number < float(low)) or (high is not None and number > float(high)):
        raise ValueError(f"template parameter {name}={value} is outside {low if low is not None else '-inf'}..{high if high is not None else 'inf'}")


def _account_id(creator: _Creator) -> str:
    """moto answers STS with its default account; keep the ARNs we build consistent with the ones it returns."""
    try:
        return creator.client("sts").get_caller_identity()["Account"]
    except (BotoCoreError, ClientError):
        # An endpoint without STS still gets usable pseudo parameters.
        return ACCOUNT_ID_FALLBACK
