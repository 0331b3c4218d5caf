"""Atomic training checkpoints shared by the /classify and /generate training loops.

A checkpoint holds the trainable weights, the optimizer, torch's RNG and the caller's progress (step,
running loss, …) next to a `plan`: whatever identifies the run's batch plan. A run only resumes from a
checkpoint whose plan equals its own; anything else (another plan, an unreadable file) is ignored with a
warning and the run starts from the beginning, because a wrong resume is worse than a slower one.

Example::

    save_checkpoint(path, model, optimizer, plan={"total": 120}, progress={"step": 50, "running": 0.4})
    load_checkpoint(path, model, optimizer, plan={"total": 120})   # {"step": 50, "running": 0.4} or None
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from durablefs import write_with

log = logging.getLogger("kdgate.checkpoint")


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changes: a frozen embedding table (most of a small LM's bytes) is the
    parent's, and the resumed run loads the parent anyway. Buffers are derived (rotary tables)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    plan: dict[str, Any],
    progress: dict[str, Any],
) -> None:
    state = {
        "model": _trainable(model),
        "optimizer": optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "plan": plan,
        "progress": progress,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_with(path, lambda handle: torch.save(state, handle))  # a crash leaves the previous one whole


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, plan: dict[str, Any]
) -> dict[str, Any] | None:
    """Restores model, optimizer and RNG from `path` and returns the saved progress; None when there is
    no usable checkpoint for this plan (nothing is restored then)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:  # unreadable: train from the start rather than fail the run
        log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
        return None
    if state.get("plan") != plan:
        log.warning("ignoring checkpoint %s: it is for plan %s, not %s", path, state.get("plan"), plan)
        return None
    own = _trainable(model)
    saved = state["model"]
    if set(saved) != set(own) or any(
        saved[k].shape != v.shape or saved[k].dtype != v.dtype for k, v in own.items()
    ):
        log.warning("ignoring checkpoint %s: its tensors are not this model's trainable ones", path)
        return None
    try:  # first: it refuses a mismatched state before anything is assigned
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as exc:
        log.warning("ignoring checkpoint %s: its optimizer state does not fit: %s", path, exc)
        return None
    model.load_state_dict(saved, strict=False)  # frozen tensors stay as loaded
    torch.set_rng_state(state["rng"])
    progress: dict[str, Any] = state["progress"]
    log.info("resuming %s at %s", path.name, progress)
    return progress
