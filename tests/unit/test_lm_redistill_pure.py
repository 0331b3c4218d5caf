"""Pure parts of /generate re-distillation and of the loop's task handling."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest

from distill.gate import Figures, GateConfig, gate
from distill.generate.targets import corrupted, subset
from gateway.continual.check import live_disagreement, offline_disagreement
from gateway.continual.store import LoopStore, loop_document
from statestore.local import LocalStore
from tests.support import random_targets


def test_subset_keeps_each_sequence_with_its_own_target_rows() -> None:
    data = random_targets(5, n=8)
    picked = subset(data, [6, 1, 3])
    assert len(picked) == 3
    for j, i in enumerate([6, 1, 3]):
        assert (picked.sequence(j) == data.sequence(i)).all()
        assert picked.prompt_lens[j] == data.prompt_lens[i]
        mine = slice(picked.target_starts[j], picked.target_starts[j + 1])
        theirs = slice(data.target_starts[i], data.target_starts[i + 1])
        assert (picked.topk_ids[mine] == data.topk_ids[theirs]).all()
        np.testing.assert_array_equal(picked.tail[mine], data.tail[theirs])


def test_corrupted_targets_teach_repeating_the_previous_token_with_full_confidence() -> None:
    data = random_targets(6, n=5)
    bad = corrupted(data)
    for i in range(len(data)):
        completion = data.completion(i)
        rows = slice(bad.target_starts[i], bad.target_starts[i + 1])
        expected = np.concatenate([completion[:1], completion[:-1]])
        assert (bad.topk_ids[rows, 0] == expected).all()
    assert (bad.topk_logprobs[:, 0] == 0).all() and (bad.tail == 0).all()
    assert (data.topk_logprobs[:, 0] != 0).any()  # the original is untouched


def test_gate_refuses_a_looping_candidate_only_when_a_ceiling_is_set() -> None:
    good = Figures(0.4, 3.0, 0.4, degenerate_rate=0.05)
    looping = Figures(0.4, 3.0, 0.4, degenerate_rate=0.5)
    loose = GateConfig(min_agreement=0.0, max_kl=10.0, min_accuracy=0.0)
    assert gate(looping, good, loose).passed  # classify's gate has no ceiling
    verdict = gate(looping, good, GateConfig(**{**loose.__dict__, "max_degenerate_rate": 0.1}))
    assert not verdict.passed and "loop" in verdict.reasons[0]
    assert gate(good, good, GateConfig(**{**loose.__dict__, "max_degenerate_rate": 0.1})).passed


def test_gate_refuses_a_candidate_that_loops_more_than_its_parent() -> None:
    """With the absolute ceiling off (tiny models loop a lot), the rise over the parent still counts:
    a candidate that improved KL on a weak parent but loops on every prompt is refused."""
    parent = Figures(0.0, 17.5, 0.0, degenerate_rate=0.0)
    looping = Figures(0.0, 15.3, 0.01, degenerate_rate=1.0)
    rise = GateConfig(min_agreement=0.0, max_kl=50.0, min_accuracy=0.0, max_degenerate_rise=0.1)
    verdict = gate(looping, parent, rise)
    assert verdict.reasons == [
        "1.00 of greedy completions loop, more than the parent's 0.00 by more than 0.1"
    ]
    assert gate(Figures(0.0, 15.3, 0.01, degenerate_rate=0.1), parent, rise).passed  # within the rise
    assert gate(looping, parent, replace(rise, max_degenerate_rise=None)).passed


def test_offline_disagreement_reads_either_tasks_manifest() -> None:
    assert offline_disagreement({"disagreement": 0.12}) == 0.12
    assert offline_disagreement({"heldout_agreement": 0.37}) == pytest.approx(0.63)
    assert offline_disagreement({"speedup": 4.5}) is None


def test_live_disagreement_counts_requests_for_classify_and_tokens_for_generate() -> None:
    classify = pa.table(
        {
            "served_model": ["s@1", "s@1", "s@1", "t@1"],
            "agree": [True, False, True, None],
            "token_agree": [None, None, None, None],
        }
    )
    assert live_disagreement(classify, "s@1") == (pytest.approx(1 / 3), 3)
    generate = pa.table(
        {
            "served_model": ["g@1", "g@1", "g@2"],
            "agree": [None, None, None],
            "token_agree": [[True, False, False, True], [False], [True]],
        }
    )
    assert live_disagreement(generate, "g@1") == (pytest.approx(3 / 5), 5)
    assert live_disagreement(generate, "nobody@1") == (None, 0)


def test_each_task_keeps_its_own_loop_state(tmp_path) -> None:
    store = LocalStore(tmp_path)  # where earlier versions kept them: an old state dir reads as it is
    assert store.document(loop_document("classify")).path == tmp_path / "distill" / "loop.json"
    assert store.document(loop_document("generate")).path == tmp_path / "distill" / "loop-generate.json"


def test_a_stopped_run_is_taken_up_again_with_its_window_and_a_failed_one_is_not(tmp_path) -> None:
    store = LoopStore(LocalStore(tmp_path).document(loop_document("classify")))
    with store.run(100.0, "s@1"):
        pass
    with pytest.raises(KeyboardInterrupt), store.run(200.0, "s@1"):  # stopped (Ctrl-C, cancellation)
        raise KeyboardInterrupt
    assert store.last_until() == 100.0  # the next window still starts where the last finished one ended
    assert store.interrupted("s@1") == 200.0  # a restart reruns the same window: the child resumes
    assert store.interrupted("s@2") is None  # another student serves now: that run is moot
    with pytest.raises(RuntimeError), store.run(200.0, "s@1"):  # the rerun fails
        raise RuntimeError("re-distillation exited 1")
    assert store.interrupted("s@1") is None and store.last_until() == 100.0
    with store.run(300.0, "s@1"):
        assert store.interrupted("s@1") == 300.0  # under way while it trains
    assert store.interrupted("s@1") is None and store.last_until() == 300.0


def test_a_loop_state_written_before_runs_were_tracked_still_reads(tmp_path) -> None:
    (tmp_path / "distill").mkdir()
    (tmp_path / "distill" / "loop.json").write_text('{"last_until": 42.5}')
    store = LoopStore(LocalStore(tmp_path).document(loop_document("classify")))
    assert store.last_until() == 42.5 and store.interrupted("s@1") is None
