"""Base of every domain model.

`defer_build`: pydantic builds a model's validator on first use instead of at import. A Lambda
function uses a handful of the models, so its cold start pays only for those (issue 2 cold-path budget).
"""

from pydantic import BaseModel, ConfigDict


class DomainModel(BaseModel):
    model_config = ConfigDict(defer_build=True)
