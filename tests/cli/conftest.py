"""The script tests' shared fixtures (defined in eval_fixtures.py), for every test module here."""

from eval_fixtures import in_process, inline_workers, tiny_run  # noqa: F401
