"""cocotb benchmark module for the array (run by :mod:`neuralmatrix.sim.benchmarks`).

Measures simulated cycles per second two ways and writes them as JSON to ``NM_BENCH_OUT``:

* ``free_running``: streams held valid with constant data, output always ready, the clock in
  cocotb's C++ GPI clock, Python waiting on one timer: the simulator's own speed with every PE
  busy;
* ``python_driven``: the testbench of ``tb_array`` driving and checking every beat from Python.
"""

from __future__ import annotations

import json
import os
import time

import cocotb
from cocotb.triggers import RisingEdge, Timer

from neuralmatrix.hw.params import Dataflow
from neuralmatrix.sim.streams import pack
from neuralmatrix.sim.tb_array import ArrayTB

PERIOD_NS = 10


@cocotb.test()
async def measure(dut):
    cycles = int(os.environ.get("NM_BENCH_CYCLES", "200000"))
    tb = ArrayTB(dut)
    await tb.reset()
    cfg = tb.config
    # Python-driven: real random tiles through the stream models, checked.
    depth = 2 * (cfg.rows + cfg.cols)
    for _ in range(8):
        tb.add_tile(*tb.random_tile(depth))
    start = time.perf_counter()
    await tb.run(10**7)
    python_rate = tb.cycle / (time.perf_counter() - start)
    tb.check()

    # Free-running: hold inputs valid; WS loads one weight tile first, then one endless tile.
    layouts = {n: s.layout for n, s in tb.sources.items()}
    dut.out__ready.value = 1
    if cfg.dataflow is Dataflow.WS:
        dut.weights__valid.value = 1
        dut.weights__payload.value = pack(layouts["weights"], [3] * cfg.cols)
        for _ in range(cfg.rows + 2):
            await RisingEdge(dut.clk)
        dut.weights__valid.value = 0
        dut.acts__payload.value = pack(layouts["acts"], {"data": [-5] * cfg.rows, "last": 0})
        dut.acts__valid.value = 1
    else:
        dut.operands__payload.value = pack(
            layouts["operands"], {"a": [7] * cfg.rows, "b": [-3] * cfg.cols, "last": 0})
        dut.operands__valid.value = 1
    await RisingEdge(dut.clk)
    start = time.perf_counter()
    await Timer(cycles * PERIOD_NS, unit="ns")
    free_rate = cycles / (time.perf_counter() - start)
    with open(os.environ["NM_BENCH_OUT"], "w") as f:
        json.dump({"free_running": free_rate, "python_driven": python_rate}, f)
