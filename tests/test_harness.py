"""The program harness (sim/harness.py, sim/tb_program.py), the DRAM model and the memory back
door, with a stand-in core (tests/sim_cores.py) in place of the accelerator."""

import json
import time

import numpy as np
import pytest

from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sim import backdoor, runner
from neuralmatrix.sim.dram_model import DramModel, flattened_verilog, sim_verilog, \
    zero_meminit_skipped
from neuralmatrix.sim.harness import ProgramJob, SimulationTimeout, run_programs

from sim_cores import ERROR, HANG, PARTIAL_BYTE, CopyCore, descriptor, partial_strobe

CFG = HwConfig()                     # bus_bytes 8, dram_latency 8
B = CFG.bus_bytes
MIB = 1 << 20
IMAGE_BYTES = 25 * MIB
FREE_RUN_CYCLES = 1_000_000


def _expected_copy(image, src, nbeats):
    """The destination region after a CopyCore job: the copy plus the partial-strobe beat."""
    out = np.zeros((nbeats + 1) * B, np.uint8)
    out[:nbeats * B] = image[src:src + nbeats * B]
    strb = partial_strobe(B)
    for j in range(B):
        if strb >> j & 1:
            out[nbeats * B + j] = PARTIAL_BYTE
    return out


@pytest.fixture(scope="module")
def runs():
    """Every harness job in one simulator process: (jobs, results, SimulationTimeout, seconds)."""
    rng = np.random.default_rng(5)
    big = rng.integers(0, 256, IMAGE_BYTES, dtype=np.uint8)
    src0, dst0, n0 = IMAGE_BYTES - 64 * 1024, 28 * MIB, 8192        # from the image's top end
    big[0:16] = descriptor(src0, dst0, n0)
    small = np.zeros(64 * 1024, np.uint8)
    small[4096:8192] = rng.integers(0, 256, 4096, dtype=np.uint8)
    small[0:16] = descriptor(4096, 16384, 100)
    small[256:272] = descriptor(4096, 20480, 3, ERROR | (5 << 4))
    small[512:528] = descriptor(4096, 24576, 10, HANG)
    small[768:784] = descriptor(4096 + 3, 32768, 4)                # unaligned source
    hang = small.copy()
    jobs = [
        ProgramJob(big, 0, [(dst0, (n0 + 1) * B), (0, IMAGE_BYTES)], 100_000, "big"),
        ProgramJob(small, 0, [(16384, 101 * B), (dst0, 1024)], 10_000, "small"),
        ProgramJob(small, 256, [(20480, 4 * B)], 10_000, "error"),
        ProgramJob(hang, 512, [(24576, 11 * B)], FREE_RUN_CYCLES, "hang"),
        ProgramJob(small, 0, [(16384, 101 * B)], 10_000, "after_hang"),
        ProgramJob(small, 768, [(32768, 5 * B)], 10_000, "unaligned"),
    ]
    t0 = time.perf_counter()
    with pytest.raises(SimulationTimeout) as info:
        run_programs(CFG, jobs, core_factory=CopyCore)
    seconds = time.perf_counter() - t0
    return jobs, info.value.results, info.value, seconds


def test_image_load_25mb_fast(runs):
    jobs, results, _, seconds = runs
    big = results[0]
    print(f"\n25 MB back-door load: {big.load_seconds * 1e3:.1f} ms; whole run_programs call "
          f"(6 jobs, build cached or not): {seconds:.1f} s")
    assert big.load_seconds < 5.0
    assert np.array_equal(big.regions[1], jobs[0].image), "image read back differs"


def test_copy_results(runs):
    jobs, results, _, _ = runs
    big = results[0]
    assert not big.timed_out and not big.error and not big.fault
    src, _, n = np.frombuffer(jobs[0].image[:12].tobytes(), "<u4")
    assert np.array_equal(big.regions[0], _expected_copy(jobs[0].image, int(src), int(n)))
    assert big.counters["bytes_written"] == (n + 1) * B
    assert big.counters["bytes_read"] == n * B + 16
    assert big.counters["insns"] == 1
    small = results[1]
    assert np.array_equal(small.regions[0], _expected_copy(jobs[1].image, 4096, 100))


def test_jobs_are_isolated(runs):
    """DRAM is zeroed between jobs; a job after a timed-out one runs normally."""
    jobs, results, _, _ = runs
    assert not results[1].regions[1].any(), "the previous job's output survived"
    again = results[4]
    assert not again.timed_out
    assert np.array_equal(again.regions[0], results[1].regions[0])
    assert again.cycles == results[1].cycles, "same program, different cycle count"


def test_cycles_match_simulated_time(runs):
    _, results, _, _ = runs
    for r in results:
        if not r.timed_out:
            assert r.cycles == r.counters["cycles"] == r.sim_cycles, r.name
    # the copy streams: about one beat per cycle plus the memory latency
    big = results[0]
    assert big.cycles < 8192 * 1.2 + 200, big.cycles


def test_error_reported(runs):
    _, results, _, _ = runs
    r = results[2]
    assert not r.timed_out and r.error and r.error_code == 5 and r.error_pc == 256


def test_timeout(runs):
    jobs, results, exc, _ = runs
    assert exc.timeouts == [3]
    r = results[3]
    assert r.timed_out and r.sim_cycles == FREE_RUN_CYCLES
    msg = str(exc)
    assert f"no done after {FREE_RUN_CYCLES} cycles" in msg, msg
    assert "pc=0x" in msg and "load_queue=" in msg and "store_busy=" in msg, msg
    # the copy itself finished before the core hung
    assert np.array_equal(r.regions[0], _expected_copy(jobs[3].image, 4096, 10))
    print(f"\nstand-in core free-running: {r.cycles_per_second / 1e6:.2f} M cycles/s "
          f"({FREE_RUN_CYCLES} cycles in {r.run_seconds:.2f} s)")


def test_unaligned_request_faults(runs):
    _, results, _, _ = runs
    r = results[5]
    assert r.fault and r.fault_addr == 4096 + 3
    assert not results[0].fault and not results[1].fault


def test_backdoor_outside_simulator():
    with pytest.raises(backdoor.BackdoorError, match="not in this simulator"):
        backdoor.Backdoor("dram.mem")


def test_sim_verilog_has_no_memory_init():
    t0 = time.perf_counter()
    text, top, public = sim_verilog(CFG, CopyCore, 32 * MIB)
    seconds = time.perf_counter() - t0
    assert top == "nm_simtop" and public == ["dram.mem"]
    assert f"reg [{8 * B - 1}:0] \\dram.mem [{32 * MIB // B - 1}:0];" in text
    assert "\\dram.mem [0]" not in text and len(text) < 1_000_000
    assert seconds < 20, f"sim_verilog took {seconds:.1f} s"
    from amaranth.back import rtlil

    original = rtlil.ModuleEmitter.emit_memory
    with zero_meminit_skipped():
        assert rtlil.ModuleEmitter.emit_memory is not original
    assert rtlil.ModuleEmitter.emit_memory is original


DRAM_CONFIGS = [HwConfig(dram_latency=1), HwConfig(rows=16, cols=16, dram_latency=5)]


@pytest.mark.parametrize("config", DRAM_CONFIGS,
                         ids=[f"B{c.bus_bytes}_L{c.dram_latency}" for c in DRAM_CONFIGS])
def test_dram_model_cocotb(config):
    size = 8192
    text, mem = flattened_verilog(DramModel(config, size), "nm_dram", "nm_dram",
                                  size // config.bus_bytes, 8 * config.bus_bytes)
    built = runner.build(text, "nm_dram", extra_sources=[backdoor.SOURCE],
                         extra_args=list(backdoor.BUILD_ARGS), public=[mem])
    runner.run(built, "tb_dram_model",
               env={"NM_CONFIG": json.dumps(config.as_dict()), "NM_MEM": mem})
