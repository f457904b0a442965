"""loraforge: the shared library of the Lambda functions (and the worker contract).

Layout (DESIGN §2): models/ (pydantic, no I/O) · logic/ (one module per use case) ·
dal/ (DynamoDB jobs table, S3 storage) · providers/ (RunPod httpx client) · notifications/ ·
presets/ (data + cost/VRAM model) · contract.py (worker input/event/result) · settings.py ·
observability.py. Dev-only code (local stack, CLI) lives in its own subpackages and is never
imported on a Lambda cold path.
"""

__version__ = "0.1.0"
