"""The shadow teacher's own process: the runner's logits, at idle priority, a failed batch reported, a
dead worker replaced."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from distill.classify.runner import load_runner
from distill.registry import Registry
from gateway.shadow.teacher_process import ShadowTeacher, ShadowTeacherError

TEACHER = "classify-teacher@1"
TEXTS = ["what a lovely day", "the match ended in a draw", "shares fell sharply"]


def test_scores_in_an_idle_priority_process_with_the_runners_logits(state_dir: Path) -> None:
    registry = Registry(state_dir)

    async def scenario() -> tuple[np.ndarray, float, int, int, int]:
        teacher = ShadowTeacher(registry, nice=10, idle_class=True, prefer_onnx=True)
        try:
            logits, cpu_s = await teacher.score(TEACHER, TEXTS)
            pid = await teacher.worker_pid()
            with pytest.raises(ShadowTeacherError, match="failed"):  # a failed batch, not a dead worker
                await teacher.score("classify-teacher@99", TEXTS)
            os.kill(pid, signal.SIGINT)  # Ctrl-C reaches the whole process group: the gateway drains
            await teacher.score(TEACHER, TEXTS)
            assert await teacher.worker_pid() == pid
            return logits, cpu_s, pid, os.sched_getscheduler(pid), os.getpriority(os.PRIO_PROCESS, pid)
        finally:
            await teacher.close()

    logits, cpu_s, pid, policy, nice = asyncio.run(scenario())
    expected = load_runner(registry, TEACHER, threads=1, prefer_onnx=True).predict_logits(TEXTS)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    assert cpu_s > 0.0
    assert pid != os.getpid()
    assert policy == os.SCHED_IDLE
    assert nice == 10


def test_a_worker_that_dies_fails_its_batch_and_the_next_batch_gets_a_new_one(state_dir: Path) -> None:
    async def scenario() -> tuple[int, int, np.ndarray]:
        teacher = ShadowTeacher(Registry(state_dir), nice=10, idle_class=True, prefer_onnx=True)
        try:
            first = await teacher.worker_pid()
            os.kill(first, signal.SIGKILL)  # as the OOM killer would
            with pytest.raises(ShadowTeacherError, match="died"):
                await teacher.score(TEACHER, TEXTS)
            logits, _ = await teacher.score(TEACHER, TEXTS)
            return first, await teacher.worker_pid(), logits
        finally:
            await teacher.close()

    first, second, logits = asyncio.run(scenario())
    assert second != first
    assert logits.shape == (len(TEXTS), 3)
