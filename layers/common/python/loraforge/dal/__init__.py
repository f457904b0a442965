"""Adapters to AWS: the DynamoDB jobs table and the S3 bucket. Nothing above this layer calls boto3."""
