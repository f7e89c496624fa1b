"""The batch's step tensors follow the cache's device, and seeded draws work on any device.

The cache's keys and values live on the "meta" device here (no memory, no GPU needed), standing
in for cuda: every tensor `_BatchCache` hands to the model must be on that device too."""
import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from modules.engine.batching import _BatchCache
from modules.engine.sampling import exponential_race


def _row_cache(length: int, device: str) -> DynamicCache:
    cache = DynamicCache()
    layer = DynamicLayer()
    layer.keys = torch.zeros(1, 2, length, 4, device=device)
    layer.values = torch.zeros(1, 2, length, 4, device=device)
    layer.is_initialized = True
    cache.layers = [layer]
    return cache


def test_step_tensors_are_on_the_caches_device():
    batch = _BatchCache()
    batch.add(_row_cache(3, "meta"))
    batch.add(_row_cache(5, "meta"))  # the first row is left-padded by 2
    assert batch.positions().device.type == "meta"
    assert batch.mask("sdpa").device.type == "meta"
    assert batch.mask("eager").device.type == "meta"
    batch.keep([1])
    assert batch.cache.layers[0].keys.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the draw moves from cuda to the CPU")
def test_a_seeded_draw_does_not_depend_on_where_the_probabilities_are():
    """Sampling.generator lives on the CPU; a GPU model's probabilities are drawn there too."""
    probabilities = torch.tensor([0.1, 0.2, 0.7])
    on_cpu = exponential_race(probabilities, torch.Generator().manual_seed(3))
    assert exponential_race(probabilities.cuda(), torch.Generator().manual_seed(3)) == on_cpu
