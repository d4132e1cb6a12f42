"""A policy from "another package": registered only when this module is imported, which the
registry does through the ``robopolicy.policies`` entry-point group (tests/test_registry_golden.py)."""

from __future__ import annotations

from robopolicy.policy import register_policy
from tests.fixture_policy import MLPPolicy


@register_policy("test_ext")
class ExtPolicy(MLPPolicy):
    pass
