"""The moto stack built from template.yaml (loraforge.local.aws_resources) is the stack the template describes.

Every other integration and e2e test runs against these resources, so a GSI, stream, TTL attribute or
redrive policy that differed from template.yaml would make them test the wrong thing.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from loraforge.local.aws_resources import (
    DEFAULT_TEMPLATE,
    StackResources,
    UnsupportedTemplateFeature,
    create_resources_from_template,
    load_template,
)
from loraforge.secrets_store import runpod_api_key, signing_key
from loraforge.settings import get_settings
from tests.support.ddb_guard import DynamoDBCalls, ScanForbidden

TEMPLATE_RESOURCES = load_template(DEFAULT_TEMPLATE)["Resources"]


def test_table_has_the_template_keys_indexes_stream_and_ttl(aws_stack: StackResources) -> None:
    # Given the table the stack created and the template's definition of it
    ddb = boto3.client("dynamodb")
    expected = TEMPLATE_RESOURCES["JobsTable"]["Properties"]

    # When moto describes it
    table = ddb.describe_table(TableName=aws_stack.table)["Table"]
    ttl = ddb.describe_time_to_live(TableName=aws_stack.table)["TimeToLiveDescription"]

    # Then keys, indexes, billing, stream and TTL are exactly the template's
    assert table["KeySchema"] == expected["KeySchema"]
    assert {i["IndexName"]: (i["KeySchema"], i["Projection"]) for i in table["GlobalSecondaryIndexes"]} == {
        i["IndexName"]: (i["KeySchema"], i["Projection"]) for i in expected["GlobalSecondaryIndexes"]
    }
    assert table["BillingModeSummary"]["BillingMode"] == expected["BillingMode"]
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": expected["StreamSpecification"]["StreamViewType"]}
    assert table["LatestStreamArn"] == aws_stack.table_stream_arn
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": expected["TimeToLiveSpecification"]["AttributeName"]}


def test_bucket_is_versioned_private_and_sends_object_events_to_eventbridge(aws_stack: StackResources) -> None:
    # Given the bucket, and an EventBridge rule on the default bus that copies S3 events to a capture queue
    s3, events, sqs = boto3.client("s3"), boto3.client("events"), boto3.client("sqs")
    capture = sqs.create_queue(QueueName="capture-s3-events")["QueueUrl"]
    capture_arn = sqs.get_queue_attributes(QueueUrl=capture, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="capture-s3", EventPattern=json.dumps({"source": ["aws.s3"], "detail-type": ["Object Created"]}))
    events.put_targets(Rule="capture-s3", Targets=[{"Id": "capture", "Arn": capture_arn}])

    # When a drop-to-train zip is uploaded
    put = s3.put_object(Bucket=aws_stack.bucket, Key="incoming/user-a/mychar.zip", Body=b"PK\x05\x06" + b"\0" * 18)
    messages = sqs.receive_message(QueueUrl=capture, WaitTimeSeconds=1).get("Messages", [])

    # Then the upload is versioned (ingest keys its idempotency on the version id) and announced on EventBridge
    assert put["VersionId"]
    assert s3.get_bucket_versioning(Bucket=aws_stack.bucket)["Status"] == "Enabled"
    assert [json.loads(m["Body"])["detail"]["object"]["key"] for m in messages] == ["incoming/user-a/mychar.zip"]
    assert all(s3.get_public_access_block(Bucket=aws_stack.bucket)["PublicAccessBlockConfiguration"].values())
    assert [r["ID"] for r in s3.get_bucket_lifecycle_configuration(Bucket=aws_stack.bucket)["Rules"]] == [
        r["Id"] for r in TEMPLATE_RESOURCES["DataBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    ]


def test_queues_exist_with_the_template_redrive_and_visibility(aws_stack: StackResources) -> None:
    # Given every queue of the template
    sqs = boto3.client("sqs")
    template_queues = {name for name, r in TEMPLATE_RESOURCES.items() if r["Type"] == "AWS::SQS::Queue"}

    # When the webhook delivery queue's attributes are read
    attributes = sqs.get_queue_attributes(QueueUrl=aws_stack.queues["WebhookDeliveryQueue"], AttributeNames=["All"])["Attributes"]

    # Then all queues exist, and webhook deliveries redrive to their DLQ after 8 receives
    assert set(aws_stack.queues) == set(aws_stack.queue_arns) == template_queues
    assert json.loads(attributes["RedrivePolicy"]) == {"deadLetterTargetArn": aws_stack.queue_arns["WebhookDeliveryDLQ"], "maxReceiveCount": 8}
    assert attributes["VisibilityTimeout"] == str(TEMPLATE_RESOURCES["WebhookDeliveryQueue"]["Properties"]["VisibilityTimeout"])
    assert attributes["SqsManagedSseEnabled"] == "true"


def test_environment_points_the_code_at_the_stack_and_secrets_resolve(aws_stack: StackResources) -> None:
    # Given the environment the fixture set from StackResources.env()

    # When the code reads its settings and secrets the way a Lambda function does
    settings = get_settings()
    key = signing_key()

    # Then settings name this stack's resources, and both secrets are readable by ARN
    assert (settings.table_name, settings.bucket_name, settings.topic_arn) == (aws_stack.table, aws_stack.bucket, aws_stack.topic_arn)
    assert settings.webhook_queue_url == aws_stack.queues["WebhookDeliveryQueue"]
    assert settings.signing_secret_arn == aws_stack.signing_secret_arn
    assert settings.runpod_endpoints == {"24gb": "", "48gb": "", "80gb": ""} and settings.gpu_prices["24gb"] == 0.00019
    assert len(key) == 64 and key.decode().isalnum()
    assert runpod_api_key() == "local-runpod-key"


def test_scan_raises_and_is_counted(aws_stack: StackResources, dynamodb_calls: DynamoDBCalls) -> None:
    # Given the no-Scan guard and a client from a private session (as powertools builds its own)
    private_client = boto3.session.Session().client("dynamodb")

    # When code queries the queue index, then scans
    boto3.client("dynamodb").query(
        TableName=aws_stack.table, IndexName="gsi2", KeyConditionExpression="gsi2pk = :pk", ExpressionAttributeValues={":pk": {"S": "STATUS#queued"}}
    )
    with dynamodb_calls.expect_scan(), pytest.raises(ScanForbidden):
        private_client.scan(TableName=aws_stack.table)

    # Then the Query is counted and the Scan was refused before reaching DynamoDB
    assert dynamodb_calls["Query"] == 1
    assert dynamodb_calls["Scan"] == 1
    assert dynamodb_calls.scan_violations == []


def test_expect_scan_fails_when_nothing_scanned(dynamodb_calls: DynamoDBCalls) -> None:
    # Given a block that expects a Scan

    # When none happens inside it
    with pytest.raises(AssertionError, match="no DynamoDB Scan"), dynamodb_calls.expect_scan():
        pass

    # Then the guard reports it (a silently broken guard would pass every no-Scan test)
    assert dynamodb_calls.scan_violations == []


def test_conditional_resources_follow_parameters(moto_server: str) -> None:
    # Given a NotifyEmail parameter (its subscription is condition-guarded in the template)
    overrides = {"NotifyEmail": "ops@example.com", "RunPodEndpoints": '{"24gb":"ep-local"}'}

    # When the stack is created with it
    stack = create_resources_from_template(moto_server, parameter_overrides=overrides, stack_name="loraforge-params")
    subscriptions = boto3.client("sns").list_subscriptions_by_topic(TopicArn=stack.topic_arn)["Subscriptions"]

    # Then the email subscription exists and the environment carries the overridden value
    assert [(s["Protocol"], s["Endpoint"]) for s in subscriptions] == [("email", "ops@example.com")]
    assert stack.env()["RUNPOD_ENDPOINTS"] == '{"24gb":"ep-local"}'


def test_unknown_template_property_is_refused_rather_than_dropped(moto_server: str, tmp_path: Path) -> None:
    # Given a template whose table gains a property the loader cannot reproduce
    template = load_template(DEFAULT_TEMPLATE)
    template["Resources"]["JobsTable"]["Properties"]["KinesisStreamSpecification"] = {"StreamArn": "arn:aws:kinesis:us-east-1:123456789012:stream/x"}
    path = tmp_path / "template.yaml"
    path.write_text(json.dumps(template))

    # When the local stack is created from it
    with pytest.raises(UnsupportedTemplateFeature) as refused:
        create_resources_from_template(moto_server, template_path=path, stack_name="loraforge-drift")

    # Then creation stops and names the property (the local stack never silently differs from the template)
    assert "KinesisStreamSpecification" in str(refused.value)
