"""The file pipeline: inspect, validate, commit (runs in ``serve`` or in ``worker``)."""
