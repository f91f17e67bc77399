"""The suite as pytest tests: one per check, against the `subject` fixture that
`python -m vmlet_conformance` provides (see `__main__`)."""

from __future__ import annotations

import pytest

from vmlet_conformance import CHECKS, Check, Subject
from vmlet_conformance.subject import SUBJECT_KEY


@pytest.fixture(scope="session")
def subject(pytestconfig: pytest.Config) -> Subject:
    return pytestconfig.stash[SUBJECT_KEY]


@pytest.mark.parametrize("conformance_check", CHECKS, ids=[c.name for c in CHECKS])
def test_conformance(subject: Subject, conformance_check: Check) -> None:
    conformance_check.run(subject)
