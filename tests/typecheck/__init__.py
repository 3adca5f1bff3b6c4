"""Modules that mypy checks (``mypy tests/typecheck``, a step of scripts/test) and pytest does not
run: each states the types of sitq's API with ``assert_type``, and the calls a type checker must
refuse with ``# type: ignore[code]``. Under the project's strict mypy settings an ignore that
no longer silences an error is itself an error, so a wrong expectation either way fails."""
