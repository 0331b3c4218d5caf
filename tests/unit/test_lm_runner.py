"""CausalLM's step-by-step decoding with a KV cache against one full forward pass (a tiny random Llama)."""

from __future__ import annotations

import pytest
import torch

from distill.generate.runner import CausalLM
from distill.registry import Manifest, Role
from tests.support import CharTokenizer, tiny_llama


@pytest.mark.filterwarnings("error::FutureWarning")  # a deprecated transformers argument fails here
def test_prefill_then_decode_matches_one_full_pass() -> None:
    manifest = Manifest(name="tiny", version=1, task="generate", role=Role.STUDENT, format="torch")
    model = tiny_llama(seed=3, tied=False)
    lm = CausalLM(manifest, model, CharTokenizer())
    prompt, completion = [1, 7, 9, 11], [20, 31, 5]
    state, first = lm.prefill(prompt)  # (V,)
    stepped = [first] + [lm.decode(state, token) for token in completion[:-1]]
    assert state.length == len(prompt) + len(completion) - 1
    with torch.inference_mode():
        full = model(input_ids=torch.tensor([prompt + completion]), use_cache=False).logits[0]  # (P + T, V)
    expected = full[len(prompt) - 1 : len(prompt) + len(completion) - 1]  # (T, V)
    assert torch.allclose(torch.stack(stepped), expected, atol=1e-5)
    assert torch.allclose(lm.completion_logits(prompt, completion), expected, atol=1e-5)
