"""The FLOPs counter against hand counts, and the step benchmark end to end."""
import pytest

from tokendrop_jax import flops
from tokendrop_jax.model.config import BertConfig

CFG = BertConfig(vocab_size=10, hidden_size=4, num_layers=4, num_heads=2, intermediate_size=8)


def test_layer_flops_by_hand():
  # q=3 queries over n=5 keys, H=4, I=8: Q 2*3*16, K+V 4*5*16, scores+sum 4*3*5*4,
  # out 2*3*16, FFN 4*3*4*8.
  assert flops.layer_flops(CFG, 3, 5) == 96 + 320 + 240 + 96 + 384


def test_forward_flops_split():
  full = flops.forward_flops(CFG, 6, 2)
  head = 2 * 2 * 4 * 4 + 2 * 2 * 4 * 10
  assert full == 4 * flops.layer_flops(CFG, 6, 6) + head
  # L=4: s=1. Layer 0 full, layer 1 cross (3 of 6), layer 2 kept only, layer 3 full.
  drop = flops.forward_flops(CFG, 6, 2, keep_tokens=3)
  assert drop == (2 * flops.layer_flops(CFG, 6, 6) + flops.layer_flops(CFG, 3, 6)
                  + flops.layer_flops(CFG, 3, 3) + head)
  assert flops.drop_flops_ratio(CFG, 6, 2, 6) == 1.0
  assert flops.train_step_flops(CFG, 5, 6, 2) == 15 * full


def test_bert_base_ratio_is_the_papers_quarter():
  ratio = flops.drop_flops_ratio(BertConfig(), 512, 76, 256)
  assert 0.70 < ratio < 0.80  # about 25% fewer FLOPs at keep 256 of 512


@pytest.mark.slow
def test_benchmark_runs_on_bench_cpu():
  from tests.test_config import load
  from tokendrop_jax import benchmark
  r = benchmark.run_benchmark(load("bench_cpu"), steps=2, warmup=1)
  assert r["full_step_s"] > 0 and r["drop_step_s"] > 0
  assert r["measured_ratio"] == pytest.approx(r["drop_step_s"] / r["full_step_s"])


def test_benchmark_runs_on_tiny():
  from tests.test_config import load
  from tokendrop_jax import benchmark
  r = benchmark.run_benchmark(load("tiny"), steps=2, warmup=1)
  assert r["full_step_s"] > 0 and r["drop_step_s"] > 0 and 0 < r["flops_ratio"] < 1
  assert len(r["full_step_times_s"]) == 2
