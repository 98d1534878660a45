"""The systolic array on Verilator (and Icarus when installed) against numpy, via cocotb."""

import json

import pytest

from neuralmatrix.hw.generate import top_module_name
from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sim.runner import available_simulators, build, run, sim_verilog

SIZES = [(1, 1), (2, 3), (3, 2), (4, 4), (8, 8), (16, 16)]
DATAFLOWS = ["ws", "os"]
TB = "neuralmatrix.sim.tb_array"
TESTS = "random_tiles_with_stalls,corner_operands,back_to_back_no_bubble"


def _run(config: HwConfig, simulator: str, testcase: str, seed: int = 1):
    built = build(sim_verilog(config, "array"), top_module_name("array"), simulator=simulator)
    env = {"NM_CONFIG": json.dumps(config.as_dict()), "NM_SEED": str(seed)}
    run(built, TB, testcase=testcase, env=env)


@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("rows,cols", SIZES, ids=[f"{r}x{c}" for r, c in SIZES])
def test_array_verilator(rows, cols, dataflow):
    _run(HwConfig(rows, cols, dataflow), "verilator", TESTS)


# Multipliers from logic (every PE), and mixed: budget 5 puts PEs (0, 0)..(1, 0) of 3x4 on DSP
# blocks and the other 7 in logic (hw/systolic.py dsp_grid).
MULTIPLIER_CONFIGS = {
    "4x4_logic": dict(rows=4, cols=4, multipliers="logic"),
    "3x4_auto5": dict(rows=3, cols=4, multipliers="auto", dsp_budget=5),
}


@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("name", list(MULTIPLIER_CONFIGS))
def test_array_multipliers_in_logic_verilator(name, dataflow):
    """The same tests, bit-exact, with the PE products built from logic (latency unchanged:
    back_to_back_no_bubble checks the exact cycle counts)."""
    _run(HwConfig(dataflow=dataflow, **MULTIPLIER_CONFIGS[name]), "verilator", TESTS)


@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 3)], ids=["1x1", "2x3"])
def test_os_accumulator_wraps(rows, cols):
    """2**17 beats of (-128)*(-128) overflow int32; the OS accumulators must wrap."""
    _run(HwConfig(rows, cols, "os"), "verilator", "accumulator_wraps")


@pytest.mark.skipif("icarus" not in available_simulators(), reason="iverilog not installed")
@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_array_icarus(dataflow):
    _run(HwConfig(3, 4, dataflow), "icarus", TESTS, seed=7)


def test_build_from_another_environment_is_not_reused(tmp_path, monkeypatch):
    """A Verilator model links cocotb's VPI library by an absolute run path: a cached build made
    by another venv (a removed worktree, a copied cache) must be rebuilt, not loaded and fail."""
    from neuralmatrix.sim import runner

    verilog = sim_verilog(HwConfig(1, 1, "ws"), "array")
    first = build(verilog, top_module_name("array"), root=tmp_path)
    assert build(verilog, top_module_name("array"), root=tmp_path).directory == first.directory
    monkeypatch.setattr(runner, "_cocotb_libs", lambda: "cocotb 2.1.0 /gone/.venv/cocotb/libs")
    other = build(verilog, top_module_name("array"), root=tmp_path)
    assert not other.reused and other.directory != first.directory
