"""The BackLink conformance suite (pytest plugin)."""
