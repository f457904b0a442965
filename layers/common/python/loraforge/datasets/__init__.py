"""Dataset archives: safe zip reading, image probing, captions, validation rules and the manifest.

`archive` and `captions` are pure stdlib + pydantic: the worker image imports them for its safe
extract and caption steps, so ingest and worker apply ONE set of rules. `probe` and `validate`
need Pillow (Lambda layer). Importing this package imports nothing heavy.
"""
