from ..train.conftest import tiny_dataset  # noqa: F401 - the session fixture, shared with the trainer tests
