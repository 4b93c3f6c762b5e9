"""The kernel inventory of a compiled program (`training.kernels`): its matmul FLOPs are the
analytic count, its bytes are the arrays' sizes, and its floor is the roofline's."""
import jax
import jax.numpy as jnp
import pytest

from tokendrop_jax import benchmark, config_lib
from tokendrop_jax.training import kernels


@pytest.fixture(scope="module")
def tiny():
  return benchmark.setup(config_lib.load_file("configs/tiny.py"), "loss_ema")


@pytest.mark.parametrize("kind", ["full", "drop"])
def test_the_compiled_steps_matmul_flops_are_the_analytic_count(tiny, kind):
  settings = tiny.kinds()[kind]
  text = tiny.jit_step(settings).lower(tiny.abstract, tiny.batch).compile().as_text()
  inv = kernels.inventory(text)
  analytic = tiny.step_flops(settings.keep_tokens)
  assert sum(k["flops"] for k in inv) == pytest.approx(analytic, rel=1e-6)
  assert all(k["bytes"] > 0 for k in inv)
  summary = kernels.summary(inv, peak_flops=1e12, bandwidth=1e11)
  for group in ("by_kind", "by_part", "by_pass"):
    assert sum(g["kernels"] for g in summary[group].values()) == summary["kernels"] == len(inv)
    assert sum(g["floor_s"] for g in summary[group].values()) == pytest.approx(summary["floor_s"])
  assert summary["matmul_floor_s"] < summary["floor_s"]
  if kind == "drop":
    assert "sort" in summary["by_kind"]  # the top-k selection of kept tokens


def test_an_elementwise_kernel_reads_its_operands_and_writes_its_result():
  a = jax.ShapeDtypeStruct((1000,), jnp.float32)
  text = jax.jit(lambda x, y: x * y + 1).lower(a, a).compile().as_text()
  (kernel,) = kernels.inventory(text)
  assert kernel["bytes"] == 3 * 4000 and kernel["flops"] == 0
  assert kernels.floor_s(kernel, peak_flops=1e12, bandwidth=1e6) == pytest.approx(0.012)


def test_a_matmul_counts_two_flops_per_multiply_add():
  a, b = jax.ShapeDtypeStruct((64, 32), jnp.float32), jax.ShapeDtypeStruct((32, 16), jnp.float32)
  inv = kernels.inventory(jax.jit(jnp.matmul).lower(a, b).compile().as_text())
  assert sum(k["flops"] for k in inv) == 2 * 64 * 32 * 16
  assert kernels.floor_s({"flops": 2e12, "bytes": 1e9}, peak_flops=1e12, bandwidth=1e12) == 2.0


def test_shape_bytes_of_arrays_and_tuples():
  assert kernels.shape_bytes("bf16[2,3]{1,0}") == 12
  assert kernels.shape_bytes("(f32[4]{0}, pred[8]{0}, u8[0]{0})") == 24
  assert kernels.shape_bytes("f32[]") == 4


def test_cudnn_attention_flops_from_its_operand_layouts():
  fwd = ('  %fmha = (bf16[8,12,128,64]{3,1,2,0}, f32[8,12,128]{2,1,0}) custom-call(%q, %k, %v), '
         'custom_call_target="__cudnn$fmhaScaleBiasSoftmax", operand_layout_constraints='
         '{bf16[8,128,12,64]{3,2,1,0}, bf16[8,256,12,64]{3,2,1,0}, bf16[8,256,12,64]{3,2,1,0}}, '
         'api_version=API_VERSION_STATUS_RETURNING')
  assert kernels._fmha_flops(fwd) == 4 * 8 * 12 * 128 * 256 * 64
  bwd = fwd.replace("SoftmaxBias", "").replace("Softmax\"", "SoftmaxBackward\"")
  assert kernels._fmha_flops(bwd) == 2.5 * kernels._fmha_flops(fwd)
