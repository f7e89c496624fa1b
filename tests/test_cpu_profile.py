"""The per-machine speed plan: the decision rule, the probe, the on-disk cache, the load hook.

Timings are never asserted (the machine is shared); the decision rule is checked on
given timings, and the probe only for producing every candidate.
"""

from __future__ import annotations

import pytest
import torch

from modules.engine import cpu_profile
from modules.engine.cpu_profile import LayerShapes, SpeedPlan, cpu_signature, decide, plan_for
from modules.engine.model_cache import ModelCache, ModelKind
from tests.conftest import make_settings

# µs per layer, shaped like measurements of SmolLM2-135M on the two CPU classes.
AVX512_LIKE = {"decode int4 bf16": 60, "decode int4 fp32": 150, "decode int8 bf16": 90,
               "decode int8 fp32": 200, "decode float bf16": 400, "decode float fp32": 300,
               "prefill bf16": 850, "prefill fp32": 1800}
AVX2_LIKE = {"decode int4 bf16": 205, "decode int4 fp32": 3744, "decode int8 bf16": 151,
             "decode int8 fp32": 1262, "decode float bf16": 311, "decode float fp32": 293,
             "prefill bf16": 8000, "prefill fp32": 1500}


BF16_PRIOR, FP32_PRIOR = ("quantized", "bf16", "bf16"), ("quantized", "fp32", "fp32")
AVX2_PRIOR = ("quantized", "bf16", "fp32")


def _parts(plan: SpeedPlan) -> tuple[str, str, str]:
    return plan.decode_kernel, plan.decode_dtype, plan.prefill_dtype


def test_measurements_that_confirm_the_prior_keep_it():
    assert _parts(decide(AVX512_LIKE, True, BF16_PRIOR)) == BF16_PRIOR
    assert _parts(decide(AVX2_LIKE, True, AVX2_PRIOR)) == AVX2_PRIOR


def test_a_clear_win_overrides_a_wrong_prior():
    # AVX2 timings with an all-bf16 prior: prompts move to float32 (5x faster).
    assert _parts(decide(AVX2_LIKE, True, BF16_PRIOR)) == AVX2_PRIOR
    # An all-float32 prior: the int4 kernel is 18x faster with bf16 activations.
    assert _parts(decide(AVX2_LIKE, True, FP32_PRIOR)) == AVX2_PRIOR
    assert _parts(decide(AVX512_LIKE, True, FP32_PRIOR)) == BF16_PRIOR


def test_models_without_4bit_weights_are_judged_by_the_int8_kernel():
    slow_int8 = dict(AVX2_LIKE, **{"decode int8 bf16": 900, "decode int8 fp32": 1200})
    plan = decide(slow_int8, False, AVX2_PRIOR)
    assert (plan.decode_kernel, plan.decode_dtype) == ("float", "fp32")
    assert decide(AVX2_LIKE, False, AVX2_PRIOR).decode_kernel == "quantized"


def test_near_ties_and_noise_keep_the_prior():
    timings = dict(AVX512_LIKE, **{"prefill bf16": 1000, "prefill fp32": 600})
    assert decide(timings, True, BF16_PRIOR).prefill_dtype == "bf16"
    assert decide(timings, True, FP32_PRIOR).prefill_dtype == "fp32"


def test_the_prior_follows_the_isa_torch_uses():
    kernel, decode, prefill = cpu_profile.prior_plan(four_bit=True)
    assert (kernel, decode) == ("quantized", "bf16")
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "DEFAULT"):
        assert prefill == "fp32"  # no native bf16 below AVX-512


def test_plan_describes_itself_in_one_line():
    plan = SpeedPlan("AVX2", "quantized", "fp32", "fp32")
    assert plan.describe("int4") == "decode: fused int4 (fp32) · prefill: fp32 (AVX2)"
    assert plan.dtype == torch.float32


def test_signature_names_the_capability_and_torch():
    signature = cpu_signature()
    assert torch.backends.cpu.get_cpu_capability() in signature
    assert torch.__version__ in signature


def test_probe_times_every_candidate():
    timings, complete = cpu_profile.probe(LayerShapes((96, 32), (32, 32), (128, 32), (32, 64)))
    assert complete
    assert {"prefill bf16", "prefill fp32", "decode float bf16", "decode float fp32"} <= set(timings)
    assert all(value > 0 for value in timings.values())


def test_the_decision_is_cached_on_disk(tmp_path, monkeypatch, tiny_causal_lm_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_causal_lm_dir)
    monkeypatch.setattr(cpu_profile.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(cpu_profile, "probe", lambda shapes: (AVX2_LIKE, False))
    assert plan_for(config, "tiny", tmp_path, four_bit=False).source == "probe"
    assert not (tmp_path / cpu_profile.CACHE_FILE).exists()  # a probe cut short is not kept
    monkeypatch.setattr(cpu_profile, "probe", lambda shapes: (AVX2_LIKE, True))
    first = plan_for(config, "tiny", tmp_path, four_bit=False)
    assert first.source == "probe" and (tmp_path / cpu_profile.CACHE_FILE).exists()

    def no_probe(shapes):
        raise AssertionError("probed again")

    monkeypatch.setattr(cpu_profile, "probe", no_probe)
    again = plan_for(config, "tiny", tmp_path, four_bit=False)
    assert again.source == "cache"
    assert (again.decode_kernel, again.decode_dtype, again.prefill_dtype) == (
        first.decode_kernel, first.decode_dtype, first.prefill_dtype)
    assert plan_for(config, "same shapes, other path", tmp_path, four_bit=False).source == "cache"
    with pytest.raises(AssertionError):  # other weights (4-bit) are probed on their own
        plan_for(config, "tiny", tmp_path, four_bit=True)


def test_a_probe_on_a_busy_machine_is_not_cached(tmp_path, monkeypatch, tiny_causal_lm_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_causal_lm_dir)
    monkeypatch.setattr(cpu_profile.os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    monkeypatch.setattr(cpu_profile, "probe", lambda shapes: (AVX2_LIKE, True))
    assert plan_for(config, "tiny", tmp_path, four_bit=False).source == "probe"
    assert not (tmp_path / cpu_profile.CACHE_FILE).exists()


@pytest.mark.parametrize("prior, dtype", [(FP32_PRIOR, torch.float32), (BF16_PRIOR, torch.bfloat16)])
def test_auto_dtype_loads_with_the_plan_and_says_so(tmp_path, monkeypatch, tiny_causal_lm_dir,
                                                    prior, dtype):
    monkeypatch.setattr(cpu_profile, "probe", lambda shapes: ({}, True))  # nothing measured
    monkeypatch.setattr(cpu_profile, "prior_plan", lambda four_bit: prior)
    settings = make_settings(dtype="auto", fast_decode=True, cache_dir=str(tmp_path))
    loaded = ModelCache(settings).get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)
    assert loaded.dtype == dtype
    assert next(loaded.model.parameters()).dtype == dtype
    assert loaded.speed_plan and loaded.speed_plan.endswith(
        f"({torch.backends.cpu.get_cpu_capability()})")
    ids = torch.tensor([[1, 5, 9, 14, 20, 3, 7, 8, 9, 10, 11, 12]])  # above PREFILL_ROWS
    with torch.inference_mode():
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                                    do_sample=False, pad_token_id=0)
    assert out.shape[1] == ids.shape[1] + 4
