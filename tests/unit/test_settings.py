"""Settings from the environment: what an operator types in a shell reaches the gateway as meant."""

from __future__ import annotations

import json

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


def test_a_recipe_override_reaches_only_its_tasks_training_child() -> None:
    from distill.registry import TaskKind
    from gateway.continual.child import redistill_command
    from gateway.continual.inprocess import check_config

    settings = Settings(
        redistill_tasks=["classify", "topics"], redistill_recipes={"topics": {"min_steps": 20}}
    )
    topics = check_config(settings, "topics", TaskKind.CLASSIFY)
    command = redistill_command(settings.state_dir, None, 1.0, "p@1", task="topics", recipe=topics.recipe)
    assert command[command.index("--recipe") + 1] == '{"min_steps": 20}'
    assert check_config(settings, "classify", TaskKind.CLASSIFY).recipe == {}


def test_a_recipe_for_a_task_the_loop_does_not_redistil_is_refused() -> None:
    with pytest.raises(ValidationError, match="redistill_recipes: topic not in redistill_tasks"):
        Settings(redistill_recipes={"topic": {"min_steps": 20}})


def test_the_registry_and_shadow_urls_reach_the_loops_training_child(monkeypatch: pytest.MonkeyPatch) -> None:
    from distill.registry import TaskKind
    from gateway.continual.child import redistill_command
    from gateway.continual.inprocess import check_config

    monkeypatch.setenv("KDGATE_REGISTRY_URL", "s3://models/kdgate")
    monkeypatch.setenv("KDGATE_SHADOW_URL", "s3://logs/shadow")
    settings = Settings()
    assert settings.shadow_log_url() == "s3://logs/shadow"
    config = check_config(settings, "classify", TaskKind.CLASSIFY)
    command = redistill_command(
        settings.state_dir, None, 1.0, "p@1", shadow_root=config.shadow_root, registry_url=config.registry_url
    )
    assert command[command.index("--registry-url") + 1] == "s3://models/kdgate"
    assert command[command.index("--shadow-root") + 1] == "s3://logs/shadow"


def test_the_shadow_logs_earlier_setting_name_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(shadow_root="/srv/shadow").shadow_url == "/srv/shadow"
    monkeypatch.setenv("KDGATE_SHADOW_ROOT", "/var/shadow")
    assert Settings().shadow_log_url() == "/var/shadow"


def test_a_replica_id_that_cannot_be_a_folder_name_is_refused() -> None:
    with pytest.raises(ValidationError, match="replica_id"):
        Settings(replica_id="gw/1")


def test_the_default_body_limit_grows_with_the_text_limits_and_an_explicit_one_is_kept() -> None:
    assert Settings().body_bytes_limit == 4 * 1024 * 1024
    for limits in ({"max_texts": 1000}, {"max_text_chars": 20_000}, {"max_prompt_chars": 1_000_000}):
        settings = Settings(**limits)
        texts = ["\U0001f600" * settings.max_text_chars] * settings.max_texts  # 12 bytes a character
        largest = max(
            len(json.dumps({"texts": texts})),
            len(json.dumps({"prompt": "\U0001f600" * settings.max_prompt_chars})),
        )
        assert largest > 4 * 1024 * 1024, limits
        assert settings.body_bytes_limit >= largest, limits
    assert Settings(max_body_bytes=2048, max_texts=1000).body_bytes_limit == 2048
