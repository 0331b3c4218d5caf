"""Everything one gateway process holds, built once in `create_app` and handed to the routes."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from distill.objectstore import filesystem, is_local
from distill.registry import Registry, RegistryError, TaskKind
from distill.shadowlog.by_task import ShadowLogWriters
from distill.shadowlog.writer import ShadowLogWriter
from durablefs import write_text
from gateway.errors import ModelUnavailable, NotFound
from gateway.rollouts.ports import MetricsSink, TrafficSetter, metric_source
from gateway.rollouts.published import DOCUMENT, WindowBoard
from gateway.serving.inflight import InFlight
from gateway.serving.metrics import GatewayMetrics
from gateway.serving.pool import ModelPool
from gateway.serving.registry_news import DOCUMENT as REGISTRY_NEWS
from gateway.serving.registry_news import RegistryNews
from gateway.serving.routing import pick_model
from gateway.serving.traffic import TrafficStore
from gateway.serving.window import LiveWindow
from gateway.settings import Settings, token_path
from gateway.shadow.classify import ClassifyShadow
from gateway.shadow.generate import GenerateShadow
from gateway.shadow.lease import shadow_lease
from gateway.shadow.pipeline import log_drops
from gateway.shadow.protection import ShadowProtection
from gateway.shadow.rates import ShadowRates
from rollout.driver import Controller
from rollout.lease import Lease, process_identity
from statestore import StateStore, open_store

M = TypeVar("M")
log = logging.getLogger("kdgate.state")


@dataclass
class GatewayState:
    settings: Settings
    registry: Registry
    metrics: GatewayMetrics
    pool: ModelPool
    traffic: TrafficStore
    admin_token: str
    window: LiveWindow
    shadow_rates: ShadowRates
    shadow: ClassifyShadow | None
    generate_shadow: GenerateShadow | None
    store: StateStore  # the split, shadow rates, rollouts and audit log every process shares
    controller: Controller
    shadow_protection: ShadowProtection  # what running re-distillations read, kept by every replica
    board: WindowBoard  # this process's live window published for the judge, and the others' (published.py)
    registry_news: RegistryNews  # models registered: every gateway on the store loads them
    shadow_lease: Lease | None = None  # with several workers, only its holder shadows (shadow/lease.py)
    ready: bool = False  # the models registered at start are loaded
    load_error: str | None = None
    building: frozenset[str] = frozenset()  # tasks a running background build brings models for
    in_flight: InFlight = field(default_factory=InFlight)  # requests being answered, and how busy
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def routed(self, task: str, key: str, loaded: Mapping[str, M], teacher: M) -> M:
        """The model of `loaded` that the task's split gives `key`. The split is shared by the gateways
        on the state dir, so it may name a model another one registered since this one loaded its
        models: the teacher answers for it meanwhile, and those models are loaded in the background."""
        model = loaded.get(pick_model(self.traffic.get(task), key))
        if model is not None:
            return model
        if "load" not in self.tasks or self.tasks["load"].done():
            self.tasks["load"] = asyncio.get_running_loop().create_task(asyncio.to_thread(self.pool.load_all))
        return teacher

    def load_models(self) -> None:
        """Loads the registered models not loaded yet, and gives a task that has no usable split its
        teacher at 100% (blocking: call it off the loop). At start, after each background build step, and
        on `POST /admin/models/reload`. A model whose files cannot be had (RegistryError) is left out,
        the others are loaded and the splits set, then the error is raised."""
        try:
            self.pool.load_all()
        finally:
            self._default_splits()

    def _default_splits(self) -> None:
        loaded = self.pool.tasks_of()
        for task in self.pool.tasks():
            teacher = self.pool.teacher_ref(task)
            if teacher is None:
                continue
            persisted = self.traffic.get(task)
            if not persisted or any(loaded.get(ref) != task for ref in persisted):
                self.traffic.set(task, {teacher: 100})  # default, or the old split names a missing model
            refs = [r for r, t in loaded.items() if t == task]
            self.metrics.set_weights(task, self.traffic.get(task), refs)

    def load_named(self, refs: Iterable[str]) -> None:
        """Loads the registered models first if any of `refs` is not loaded here (blocking: call it off
        the loop). Replicas share a registry: a model another process registered (the loop, an import, a
        reload sent to another replica behind the balancer) is named to this one by an admin write before
        it has loaded it. A model that cannot be loaded is left for the write's own check to name."""
        if set(refs) <= set(self.pool.tasks_of()):
            return
        try:
            self.load_models()
        except RegistryError as exc:
            log.warning("loading the registered models for an admin write: %s", exc)

    def unloaded(self) -> frozenset[str]:
        """The registered models this process has not loaded (blocking: reads the registry)."""
        return frozenset(m.ref for m in self.registry.list()) - set(self.pool.tasks_of())

    def task_readiness(self) -> dict[str, str]:
        """Per served task: `ready` (its teacher is loaded), `building` (a background build will bring
        one) or `missing`."""
        readiness = {}
        for task in self.pool.tasks():
            if self.pool.teacher_ref(task) is not None:
                readiness[task] = "ready"
            else:
                readiness[task] = "building" if task in self.building else "missing"
        return readiness

    def served_task(self, task: str, kind: TaskKind | None = None, field: str = "task") -> TaskKind:
        """The kind of `task` if it is served (and of `kind`, if given), else a 404 naming those that are."""
        tasks = self.pool.tasks()
        found = tasks.get(task)
        if found is None or (kind is not None and found is not kind):
            served = sorted(t for t, k in tasks.items() if kind is None or k is kind)
            what = f"{kind} task" if kind is not None else "task"
            raise NotFound(f"no {what} {task!r}; served: {', '.join(served)}", field=field)
        return found

    def no_model(self, task: str) -> ModelUnavailable:
        """The refusal of a request to a task with no teacher loaded: 503 with Retry-After."""
        if task in self.building:
            return ModelUnavailable(f"the {task} models are being built (GET /admin/build); retry later")
        return ModelUnavailable(
            f"no {task} teacher is loaded (kdgate models import PATH --role teacher, or kdgate models build)"
        )

    @classmethod
    def build(cls, settings: Settings, clock: Callable[[], float] = time.time) -> GatewayState:
        """The parts, each given what it needs. `clock` (epoch seconds) is the time the rollout judge
        decides on: the controller's `now` and the live windows' buckets read it."""
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        registry = Registry(settings.state_dir, settings.registry_url)
        metrics = GatewayMetrics()
        pool = ModelPool(registry, settings, metrics)
        window = LiveWindow(settings.window_seconds, clock=clock)
        in_flight = InFlight()
        store = open_store(settings.store_url(), settings.state_dir)
        metrics.track_store(store.up)
        rates = ShadowRates(store.document("shadow_rates"), settings)
        traffic = TrafficStore(store.document("traffic"))
        protection = ShadowProtection(store.document("shadow_protection"))
        board = WindowBoard(store.document(DOCUMENT), window)
        controller = Controller(
            store.rollouts,
            store.audit,
            metric_source(settings, window, board),
            TrafficSetter(traffic, metrics, pool),
            MetricsSink(metrics),
            clock=clock,
            lease=store.lease(process_identity("gateway")),
        )

        def favoured(ref: str) -> bool:  # the judge waits on the comparisons of a rollout's candidate
            return settings.shadow_favour_candidates and ref in controller.candidates.values()

        shadow = generate_shadow = None
        if settings.shadow_enabled:
            shadow_url = settings.shadow_log_url()
            remote = not is_local(filesystem(shadow_url)[0])

            def writer(task: str) -> ShadowLogWriter:
                return ShadowLogWriter(
                    shadow_url,
                    task,
                    replica=settings.replica_id or (socket.gethostname() if remote else None),
                    background=remote,  # an object store's latency stays off the shadow workers
                    on_drop=log_drops(metrics),
                    flush_rows=settings.shadow_flush_rows,
                    flush_seconds=settings.shadow_flush_seconds,
                    max_pending_rows=settings.shadow_max_pending_rows,
                    max_bytes=settings.shadow_max_bytes,
                    max_age_seconds=settings.shadow_max_age_seconds,
                    redact_inputs=settings.redact_inputs,
                    protect_after=protection,
                ).start()

            shadow = ClassifyShadow(
                settings,
                metrics,
                pool,
                window,
                ShadowLogWriters(writer),
                rates,
                busy_share=in_flight.busy_share,
                favoured=favoured,
            )
            generate_shadow = GenerateShadow(
                settings, metrics, pool, window, ShadowLogWriters(writer), rates, favoured=favoured
            )
        return cls(
            settings=settings,
            registry=registry,
            metrics=metrics,
            pool=pool,
            traffic=traffic,
            admin_token=settings.admin_token or ensure_token_file(settings.state_dir),
            window=window,
            shadow_rates=rates,
            shadow=shadow,
            generate_shadow=generate_shadow,
            store=store,
            controller=controller,
            shadow_protection=protection,
            board=board,
            registry_news=RegistryNews(store.document(REGISTRY_NEWS)),
            shadow_lease=shadow_lease(settings.state_dir)
            if settings.shadow_enabled and settings.workers > 1
            else None,
            in_flight=in_flight,
        )


def ensure_token_file(state_dir: Path) -> str:
    """The admin token from `<state_dir>/admin.token`, created (mode 0600) with a random token if absent.
    The workers of `serve --workers N` start together on a fresh state dir: one creates the file, and
    the others read its token rather than each keeping a token of their own."""
    path = token_path(state_dir)
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    try:
        write_text(path, token + "\n", mode=0o600, exclusive=True)
    except FileExistsError:
        return path.read_text().strip()
    return token
