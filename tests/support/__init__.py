"""Test helpers shared by every tier: event fixtures (`events`) and the DynamoDB no-Scan guard (`ddb_guard`)."""
