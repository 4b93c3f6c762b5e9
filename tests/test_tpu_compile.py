"""Compiling for TPU slices with the TPU compiler (libtpu, no TPU): slice names, the
multi-slice mesh, per-kind memory and collectives, the compile main's refusals,
and splash attention lowered for a TPU."""
import json
import os
import subprocess
import sys

import pytest

from tokendrop_jax import config_lib
from tokendrop_jax.training import aot, loop, sharding, slice_plan, tpu_slice

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OOM = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
       "temporaries (44.23G) exceeds available HBM (15.75G).")


def _main(*args, module="tokendrop_jax.compile", timeout=300):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, check=False)


def _tiny(variant="loss_ema", **data):
  config = config_lib.load_file(os.path.join(ROOT, "configs", "tiny.py"), variant)
  config.data.update(data)
  return config


@pytest.mark.parametrize("name,generation,chips,slices,compiler", [
    ("v4-8", "v4", 4, 1, "v4:2x2x1"),
    ("v4-32", "v4", 16, 1, "v4:2x2x4"),
    ("v5litepod-16", "v5e", 16, 1, "v5e:4x4"),
    ("v5e-16", "v5e", 16, 1, "v5e:4x4"),
    ("v5p-128", "v5p", 64, 1, "v5:4x4x4"),
    ("v6e-8", "v6e", 8, 1, "v6e:2x4"),
    ("2xv5e-16", "v5e", 16, 2, "v5e:4x4"),
])
def test_slice_names_map_to_the_compilers_topologies(name, generation, chips, slices, compiler):
  s = tpu_slice.parse(name)
  assert (s.generation, s.chips, s.num_slices, s.compiler_topology) == (
      generation, chips, slices, compiler)


def test_slice_devices_are_the_slices_chips():
  devices = tpu_slice.devices(tpu_slice.parse("v4-32"))
  assert len(devices) == 16 and {d.platform for d in devices} == {"tpu"}
  assert devices[0].device_kind == "TPU v4"
  assert len({d.process_index for d in devices}) == 4  # four hosts of four chips


@pytest.mark.parametrize("name,words", [
    ("v9-8", ["unknown TPU slice", "v4-{8,16", "v5e-{1,4,8", "v5p-", "v6e-"]),
    ("v5e-12", ["v5e slices come in sizes", "v5e-16"]),
    ("v4-6", ["v4-8", "counts TensorCores"]),
])
def test_bad_slice_names_list_the_known(name, words):
  with pytest.raises(ValueError) as e:
    tpu_slice.parse(name)
  for w in words:
    assert w in str(e.value)


def test_multislice_mesh_puts_data_parallelism_across_slices():
  devices = tpu_slice.devices(tpu_slice.parse("2xv5e-4"))
  mesh = sharding.make_mesh(-1, 2, 1, devices)
  assert mesh.shape == {"data": 4, "fsdp": 2, "tensor": 1}
  # The data axis's outer half is one slice, the other half the other: only data-parallel
  # traffic crosses the data-center network; fsdp stays inside a slice.
  grid = mesh.devices  # [data, fsdp, tensor]
  assert {d.slice_index for d in grid[:2].flat} == {0}
  assert {d.slice_index for d in grid[2:].flat} == {1}
  with pytest.raises(ValueError, match=r"mesh.data=1: the devices span 2 TPU slices"):
    sharding.make_mesh(1, 8, 1, devices)


def test_a_mesh_off_the_torus_is_an_error_unless_list_order_is_asked_for():
  devices = tpu_slice.devices(tpu_slice.parse("v5e-16"))
  with pytest.raises(ValueError, match=r"mesh \{'data': 2, 'fsdp': 8, 'tensor': 1\}: jax's "
                                       r"topology-aware layout of the 16 TPU v5 lite devices"):
    sharding.make_mesh(2, 8, 1, devices)
  mesh = sharding.make_mesh(2, 8, 1, devices, device_order="list")
  assert list(mesh.devices.flat) == devices
  assert sharding.make_mesh(4, 4, 1, devices).shape["fsdp"] == 4  # one that follows the torus


def test_oom_sizes_read_the_compilers_message():
  assert aot.oom_sizes(OOM) == (int(44.23 * 2**30), int(15.75 * 2**30))
  assert aot.oom_sizes("RESOURCE_EXHAUSTED: something else") is None
  assert aot.memory_space(OOM) == "hbm"
  # Refused after lowering, by a little (bert_large full on v5e-8 at global batch 192).
  late = ("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU compile permanent error. Ran "
          "out of memory in memory space hbm. Used 15.77G of 15.75G hbm. Exceeded hbm capacity "
          "by 18.68M. Total hbm usage >= 16.02G: reserved 258.00M program 12.02G")
  assert aot.oom_sizes(late) == (int(15.77 * 2**30), int(15.75 * 2**30))
  assert aot.memory_space(late) == "hbm"


# What libtpu 0.0.42.1 said compiling bert_large's full step with remat on 4 v4 chips at
# global batch 512 (`python -m tokendrop_jax.compile --config=configs/bert_large.py:loss_ema
# --topology=v4-8 --kinds=full --config.model.remat=full`).
VMEM = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space "
        "vmem. Used 16.73M of 16.00M vmem. Exceeded vmem capacity by 748.0K.")


def test_a_kernel_out_of_vmem_is_not_called_out_of_hbm():
  """A kernel that does not fit a core's on-chip VMEM is the compiler's limit, not the
  chip's HBM: the report and the advice say which."""
  assert aot.memory_space(VMEM) == "vmem" and aot.oom_sizes(VMEM) is None
  config = _tiny()
  config.model.remat = "full"
  s = tpu_slice.parse("v4-8")
  report = {"fits": False, "error": VMEM, "memory_space": "vmem", "compile_s": 1.0}
  said = slice_plan.advice(config, s, report)
  assert said.startswith("does not compile: the TPU compiler ran out of VMEM")
  assert "not of the chip's HBM" in said and "grad_accum_steps=2" in said
  assert "by " not in said.split(";")[0]  # no HBM sizes: the message has none
  hbm = slice_plan.advice(config, s, {"fits": False, "needed_bytes": 2 * 2**30,
                                      "available_bytes": 2**30})
  assert hbm.startswith("does not fit by 1.00 GiB") and "--config.mesh.fsdp" in hbm
  config.mesh.update(data=1, fsdp=4)  # already sharded over every chip: not advised again
  assert "--config.mesh.fsdp" not in slice_plan.advice(config, s, {"fits": False})


def _compile_every_kind(variant, topology):
  config = _tiny(variant, global_batch_size=32)
  s = tpu_slice.parse(topology)
  names = slice_plan.kind_names(config)
  return config, s, names, slice_plan.compile_kinds(config, s, tpu_slice.devices(s), names)


@pytest.mark.parametrize("variant,topology", [
    ("loss_ema", "v5e-4"),
    pytest.param("loss_ema+sctd", "v4-8", marks=pytest.mark.slow)])
def test_every_step_kind_compiles_for_a_slice(variant, topology):
  """tiny's kinds (full, drop, drop+ScTD) and eval, on a 4-chip slice: memory fields
  present and within the chip; no drop kind moves more than the full step."""
  config, s, names, reports = _compile_every_kind(variant, topology)
  assert names == ["full", "drop32"] + (["drop32_sctd"] if "sctd" in variant else []) + ["eval"]
  for name, r in reports.items():
    assert r["fits"], name
    for key in ("argument_bytes", "output_bytes", "temp_bytes", "peak_bytes", "code_bytes"):
      assert r[key] >= 0, (name, key)
    assert 0 < r["peak_bytes"] < s.hbm_bytes
  full = reports["full"]
  assert full["collective_bytes"]["all-reduce"] > 0  # data parallel: gradients all-reduced
  # As on the CPU mesh (test_sharded_comm): a drop step may add the loss-EMA table's
  # reduction (4 bytes a vocabulary entry), and ScTD its full-model forward (eval's bytes).
  forward = reports["eval"]["collective_bytes_total"]
  for name in names[1:-1]:
    bound = (full["collective_bytes_total"] + 4 * config.model.vocab_size
             + (forward if name.endswith("_sctd") else 0))
    assert reports[name]["collective_bytes_total"] <= bound, name
  assert reports["drop32"]["model_flops_per_device"] < full["model_flops_per_device"]
  # The state sits on every chip (pure data parallel): arguments hold at least it.
  assert full["argument_bytes"] >= full["state_bytes"] > 0


@pytest.mark.slow
def test_every_schedule_kind_compiles_for_a_v4_slice():
  config, _, names, reports = _compile_every_kind("loss_ema+schedule", "v4-8")
  assert len(names) > 3
  full = reports["full"]["collective_bytes_total"] + 4 * config.model.vocab_size
  for name, r in reports.items():
    assert r["fits"] and r["peak_bytes"] > 0, name
    assert r["collective_bytes_total"] <= full, name


def test_compile_main_writes_json_and_table(tmp_path):
  out = tmp_path / "plan.json"
  res = _main("--config=configs/tiny.py:loss_ema", "--topology=v4-8", "--kinds=drop32,eval",
              f"--output={out}")
  assert res.returncode == 0, res.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["chips"] == 4 and result["compiler_topology"] == "v4:2x2x1"
  assert set(result["kinds"]) == {"drop32", "eval"}
  assert result["kinds"]["drop32"]["host_peak_gib"] > 0  # measured in its own process
  assert result["kinds"]["drop32"]["steps_in_run"] == 300
  assert result["versions"]["libtpu"]
  assert "drop32" in res.stdout and "peak GiB" in res.stdout


def test_compile_main_reports_a_batch_that_does_not_fit(tmp_path):
  out = tmp_path / "plan.json"
  res = _main("--config=configs/tiny.py:loss_ema", "--topology=v5e-4", "--kinds=full",
              "--config.data.global_batch_size=262144", f"--output={out}")
  assert res.returncode == 5, res.stderr[-3000:]
  assert "Traceback" not in res.stderr
  assert "exceeds available HBM" in res.stdout  # the compiler's own words
  assert "does not fit by" in res.stderr and "--config.model.remat=full" in res.stderr
  assert "optim.grad_accum_steps=2" in res.stderr
  report = json.loads(out.read_text())["kinds"]["full"]
  assert report["fits"] is False and report["needed_bytes"] > report["available_bytes"]


@pytest.mark.parametrize("args,words", [
    (["--topology=v5e-12"], ["--topology='v5e-12'", "v5e-16"]),
    (["--topology=v5e-16", "--config.mesh.data=3"], ["mesh.data=3", "16 devices"]),
    (["--topology=v5e-32"], ["data.global_batch_size=16", "32 shards"]),
    (["--topology=v5e-4", "--kinds=drop99"], ["--kinds: drop99", "drop32"]),
    # data 2 x fsdp 8 does not map onto v5e-16's 4x4 torus: no silent list order.
    (["--topology=v5e-16", "--config.mesh.data=2", "--config.mesh.fsdp=8"],
     ["topology-aware layout", "--config.mesh.device_order=list"]),
])
def test_compile_main_refuses_bad_input_before_compiling(args, words):
  res = _main("--config=configs/tiny.py:loss_ema", *args, timeout=120)
  assert res.returncode == 2, res.stderr[-2000:]
  assert "Traceback" not in res.stderr and "compiling" not in res.stdout
  for w in words:
    assert w in res.stderr


def test_auto_attention_follows_the_target_platform():
  config = _tiny(seq_len=256)
  config.model.update(max_position=256, attention_dropout_rate=0.0)
  assert config_lib.model_config(config, platform="tpu").attention == "splash"
  assert config_lib.model_config(config, platform="cpu").attention == "einsum"
  config.token_drop.keep_tokens = 128
  run = loop.build(config, (0, 1, 2, 3, 4), devices=tpu_slice.devices(tpu_slice.parse("v5e-4")))
  assert run.model.cfg.attention == "splash"


def test_splash_attention_lowers_for_a_tpu():
  """The Pallas splash kernel compiles for a v5e (TPU custom calls in the program),
  in the full step and in the drop step's kept-token layers."""
  config = _tiny(seq_len=256, max_predictions_per_seq=32)
  config.model.update(max_position=256, attention_dropout_rate=0.0)
  config.token_drop.keep_tokens = 128
  s = tpu_slice.parse("v5e-4")
  reports = slice_plan.compile_kinds(config, s, tpu_slice.devices(s), ["drop128"])
  assert reports["drop128"]["fits"]
  run = loop.build(config, (0, 1, 2, 3, 4), devices=tpu_slice.devices(s))
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  batch = aot.abstract_batch(run.layout.mesh, 32, 256, 32)
  kind = [k for k in run.train_steps if not k.full][0]
  with jax.set_mesh(run.layout.mesh), nn.logical_axis_rules(run.layout.rules):
    text = run.train_steps[kind].lower(run.layout.abstract, batch).as_text()
  assert text.count("tpu_custom_call") >= 3  # forward and backward kernels


@pytest.mark.parametrize("start", [8, 64, 296, 304, 1024])
def test_max_batch_search_brackets_the_largest_batch_that_fits(start):
  """A compiler whose temporaries grow as 100 + 3 x batch bytes against a 1000-byte chip:
  the largest multiple of 8 that fits is 296 (988 bytes), wherever the search starts."""
  calls = []

  def compile_at(b):
    calls.append(b)
    temp = 100 + 3 * b
    if temp <= 1000:
      return {"fits": True, "temp_bytes": temp}
    return {"fits": False, "needed_bytes": temp, "available_bytes": 1000}

  found = slice_plan.search_max_batch(compile_at, start, 8, resolution=0.0)
  assert (found["max_batch"], found["refused_at"]) == (296, 304)
  assert len(calls) == len(set(calls)) <= 10  # no batch compiled twice, a few compiles
  assert found["tried"]["296"] == {"fits": True, "temp_bytes": 988}


@pytest.mark.parametrize("start", [64, 512, 2048])
def test_max_batch_search_does_not_creep_when_the_compiler_squeezes(start):
  """Near the limit the TPU compiler fits a program by squeezing its temporaries just under
  the chip's (999 of 1000 bytes from batch 300 to 600 here): a line through them lands one
  step above the last fit, try after try. The search still halves its way to 600."""
  calls = []

  def compile_at(b):
    calls.append(b)
    if b <= 600:
      return {"fits": True, "temp_bytes": min(100 + 3 * b, 999)}
    return {"fits": False, "needed_bytes": 100 + 3 * b, "available_bytes": 1000}

  found = slice_plan.search_max_batch(compile_at, start, 8, resolution=0.0)
  assert (found["max_batch"], found["refused_at"]) == (600, 608)
  assert len(calls) == len(set(calls)) <= 12


def test_a_compile_whose_process_fails_is_named_with_its_command():
  """A kind compiled in its own process that dies without a report (here: bad input the
  child refuses) stops the main with the child's status, its host memory and its command."""
  code = ("from tokendrop_jax import compile as c; c._or_exit(lambda: c._compile_isolated("
          "['--config=configs/tiny.py:loss_ema', '--topology=v5e-4', "
          "'--config.data.global_batch_size=6'], 'full'))")
  res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, check=False)
  assert res.returncode == 1, res.stderr[-2000:]
  assert "error: compiling full failed: its process exited with status 2 after using" in res.stderr
  assert ("python -m tokendrop_jax.compile --config=configs/tiny.py:loss_ema --topology=v5e-4 "
          "--config.data.global_batch_size=6 --kinds=full --noisolate") in res.stderr
  assert "data.global_batch_size=6" in res.stderr.split("--noisolate")[-1]  # the child's words


def test_max_batch_search_confirms_a_probed_answer_in_full():
  """Probes say whether the buffers fit; a later pass can still refuse (a kernel out of
  VMEM): here the full compile refuses 576 and 600 that the probe passed. The search
  steps below them and answers only what a full compile accepted."""
  probes, full = [], []

  def compile_at(b):
    probes.append(b)
    if b <= 600:
      return {"fits": True, "probe": True}
    return {"fits": False, "needed_bytes": 100 + 3 * b, "available_bytes": 1000}

  def confirm(b):
    full.append(b)
    return {"fits": b <= 560, "temp_bytes": 900} if b <= 560 else {"fits": False}

  found = slice_plan.search_max_batch(compile_at, 64, 8, resolution=0.0, confirm=confirm)
  assert (found["max_batch"], found["refused_at"]) == (560, 568)
  assert found["tried"]["560"] == {"fits": True, "temp_bytes": 900}  # confirmed: no probe
  assert all(found["tried"][str(b)]["fits"] is False for b in full if b > 560)
  assert full[-1] == 560 and len(full) == len(set(full))
  assert len(probes) == len(set(probes)) <= 16


def test_a_probe_stops_the_compiler_once_the_buffers_fit():
  """The probe's "fits" is the compiler's own HBM check, read from its log before it lowers
  the program; a batch it refuses is reported with the compiler's sizes, as in full."""
  from tokendrop_jax import compile as compile_main  # pylint: disable=import-outside-toplevel
  args = ["--config=configs/tiny.py:loss_ema", "--topology=v5e-4"]
  small = compile_main._compile_isolated(args, "full", probe=True)
  assert small["fits"] and small["probe"] and "temp_bytes" not in small
  big = compile_main._compile_isolated(
      args + ["--config.data.global_batch_size=262144"], "full", probe=True)
  assert not big["fits"] and "probe" not in big
  assert big["needed_bytes"] > big["available_bytes"] == int(15.75 * 2**30)


@pytest.mark.slow
def test_max_batch_compiles_its_answer_in_full_also_at_the_configs_batch(tmp_path):
  """The config's own batch is probed first; when the search ends there, that batch is
  compiled in full (sizes in the JSON), not left a probe. tiny on v5e-4: 110592 fits, the
  next step of 4 does not (libtpu 0.0.42.1)."""
  out = tmp_path / "plan.json"
  res = _main("--config=configs/tiny.py:loss_ema", "--topology=v5e-4", "--kinds=full",
              "--max_batch", "--config.data.global_batch_size=110592", f"--output={out}",
              timeout=900)
  assert res.returncode == 0, res.stderr[-3000:]
  result = json.loads(out.read_text())
  found = result["max_batch"]["full"]
  assert found["max_batch"] == 110592 and found["refused_at"] > 110592
  answer = found["tried"]["110592"]
  assert answer["fits"] and "probe" not in answer and answer["temp_bytes"] > 0
  assert "peak_bytes" in result["kinds"]["full"]  # the probe replaced by the full compile


_DIES_AT_64 = """
import sys
from absl import app
from tokendrop_jax import compile as c

def fake(argv, name, probe=False):  # buffers fit up to 64; compiling 64 in full crashes
  b = int(([a for a in argv if a.startswith('--config.data.global_batch_size=')]
           or ['=16'])[-1].split('=')[1])
  if b > 64:
    return {"fits": False, "compile_s": 1.0, "needed_bytes": b, "available_bytes": 64}
  if probe:
    return {"fits": True, "probe": True, "compile_s": 1.0}
  if b == 64:
    raise c.CompileDied("compiling full failed: its process was killed by SIGSEGV", "SIGSEGV")
  return {"fits": True, "compile_s": 1.0, "temp_bytes": b}

c._compile_isolated = fake
c._define_flags()
sys.argv = ["compile", "--config=configs/tiny.py:loss_ema", "--topology=v5e-4", "--kinds=full",
            "--max_batch", "--output=" + sys.argv[1]]
app.run(c.main)
"""


def test_a_compile_that_dies_in_the_batch_search_is_a_recorded_result(tmp_path):
  """A batch the TPU compiler crashes on cannot be trained either: the search stops there,
  the JSON keeps where and how (and every compile before), and the main exits 1 naming it."""
  out = tmp_path / "plan.json"
  res = subprocess.run([sys.executable, "-c", _DIES_AT_64, str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, check=False)
  assert res.returncode == 1, res.stderr[-3000:]
  assert "error: compiling full failed: its process was killed by SIGSEGV" in res.stderr
  assert "global batch 64: the compile died (SIGSEGV)" in res.stdout
  found = json.loads(out.read_text())["max_batch"]["full"]
  assert (found["died_at"], found["died"]) == (64, "SIGSEGV")
  assert found["tried"]["64"] == {"fits": True, "temp_bytes": None, "probe": True}
  assert found["tried"]["128"]["fits"] is False


def test_the_known_compiler_crash_names_its_way_around():
  """libtpu 0.0.42.1 dies compiling a drop step with remat=full and einsum attention dropout
  (docs/pods.md); only that combination gets the hint."""
  config = _tiny()
  config.model.remat = "full"
  hint = slice_plan.crash_hint(config, "drop32")
  assert "--config.model.remat=dots" in hint and "attention_dropout_rate=0" in hint
  assert slice_plan.crash_hint(config, "full") == ""
  config.model.remat = "dots"
  assert slice_plan.crash_hint(config, "drop32") == ""
