"""Settings from the environment: what an operator types in a shell reaches the gateway as meant."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.settings import Settings


def test_none_in_the_environment_turns_an_optional_limit_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDGATE_SHADOW_MAX_CPU", "none")
    monkeypatch.setenv("KDGATE_SHADOW_IDLE_CPU", "0.75")
    settings = Settings()
    assert settings.shadow_max_cpu is None
    assert settings.shadow_idle_cpu == 0.75


def test_a_bad_value_in_the_environment_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDGATE_SHADOW_MAX_CPU", "a lot")
    with pytest.raises(ValidationError, match="shadow_max_cpu"):
        Settings()
