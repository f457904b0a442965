"""Dev-only helpers for running loraforge without an AWS account (the embedded local stack, tests).

Nothing here is imported by Lambda code: it needs moto / aws-sam-translator, which the layer does not ship.
"""
