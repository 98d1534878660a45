"""cocotb testbench of the systolic array (``neuralmatrix.hw.systolic.SystolicArray``).

Run through :func:`neuralmatrix.sim.runner.run`; the hardware configuration arrives in the
``NM_CONFIG`` environment variable (JSON of :meth:`HwConfig.as_dict`). Results are compared
with :func:`neuralmatrix.hw.arith.matmul_int32`.
"""

from __future__ import annotations

import json
import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge

from neuralmatrix.hw.arith import INT8_MAX, INT8_MIN, matmul_int32
from neuralmatrix.hw.params import Dataflow, HwConfig
from neuralmatrix.hw.systolic import array_layouts, latency, os_tile_interval, ws_bank_drain
from neuralmatrix.sim.streams import StreamSink, StreamSource


def config_from_env() -> HwConfig:
    return HwConfig(**json.loads(os.environ["NM_CONFIG"]))


class ArrayTB:
    """Clock, reset, stream models and the reference model for one array instance."""

    def __init__(self, dut, *, idle: float = 0.0, backpressure: float = 0.0, seed: int = 0):
        self.dut, self.config = dut, config_from_env()
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        layouts = array_layouts(self.config)
        self.sources = {name: StreamSource(dut, name, layouts[name], idle=idle, rng=self.rng)
                        for name in layouts if name != "out"}
        self.sink = StreamSink(dut, "out", layouts["out"], backpressure=backpressure, rng=self.rng)
        self.expected: list[np.ndarray] = []   # expected output rows, in order
        self.cycle = 0
        Clock(dut.clk, 10, unit="ns").start()

    async def reset(self) -> None:
        self.dut.rst.value = 1
        for _ in range(2):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0

    # -- stimulus --------------------------------------------------------------------------

    def add_tile(self, a: np.ndarray, b: np.ndarray) -> None:
        """Queue the product ``a @ b`` of one tile (shapes per dataflow, see systolic.py)."""
        cfg = self.config
        if cfg.dataflow is Dataflow.WS:
            assert b.shape == (cfg.rows, cfg.cols) and a.shape[1] == cfg.rows
            self.sources["weights"].send([list(map(int, row)) for row in b])
            m = a.shape[0]
            self.sources["acts"].send(
                {"data": list(map(int, a[i])), "last": int(i == m - 1)} for i in range(m))
        else:
            assert a.shape[0] == cfg.rows and b.shape[1] == cfg.cols and a.shape[1] == b.shape[0]
            k = a.shape[1]
            self.sources["operands"].send(
                {"a": list(map(int, a[:, t])), "b": list(map(int, b[t])), "last": int(t == k - 1)}
                for t in range(k))
        self.expected.extend(matmul_int32(a, b))

    def random_tile(self, depth: int, low: int = INT8_MIN, high: int = INT8_MAX):
        """Random operands; *depth* is M (WS) or K (OS)."""
        cfg = self.config
        shape_a, shape_b = ((depth, cfg.rows), (cfg.rows, cfg.cols)) if cfg.dataflow is Dataflow.WS \
            else ((cfg.rows, depth), (depth, cfg.cols))
        return (self.np_rng.integers(low, high + 1, shape_a), self.np_rng.integers(low, high + 1, shape_b))

    # -- running ---------------------------------------------------------------------------

    async def run(self, max_cycles: int) -> None:
        """Step until every expected row arrived; fail with the cycle count on timeout."""
        while len(self.sink.beats) < len(self.expected):
            if self.cycle >= max_cycles:
                raise AssertionError(
                    f"timeout after {self.cycle} cycles: {len(self.sink.beats)} of "
                    f"{len(self.expected)} output rows, inputs left: "
                    f"{ {n: len(s.queue) for n, s in self.sources.items()} }")
            for s in self.sources.values():
                s.drive()
            self.sink.drive()
            await FallingEdge(self.dut.clk)
            for s in self.sources.values():
                s.sample(self.cycle)
            self.sink.sample(self.cycle)
            await RisingEdge(self.dut.clk)
            self.cycle += 1
        for s in self.sources.values():
            s.valid.value = 0

    def check(self) -> None:
        got = np.array([beat["data"] for beat in self.sink.beats], dtype=np.int64)
        want = np.array(self.expected, dtype=np.int64)
        assert got.shape == want.shape, f"got {got.shape} rows, expected {want.shape}"
        bad = np.argwhere(got != want)
        assert not len(bad), (f"{len(bad)} mismatches; first at row {bad[0][0]} col {bad[0][1]}: "
                              f"got {got[tuple(bad[0])]}, expected {want[tuple(bad[0])]}")
        lasts = [i for i, beat in enumerate(self.sink.beats) if beat["last"]]
        assert lasts, "no output beat carried last"


def _max_cycles(tb: ArrayTB, slack: float = 4.0) -> int:
    cfg = tb.config
    beats = sum(len(s.queue) for s in tb.sources.values())
    return int(slack * (beats + len(tb.expected)) + 8 * (cfg.rows + cfg.cols) + 200)


@cocotb.test()
async def random_tiles_with_stalls(dut):
    """Random tiles of random depth, random idle inputs and back-pressure."""
    tb = ArrayTB(dut, idle=0.3, backpressure=0.3, seed=int(os.environ.get("NM_SEED", "1")))
    await tb.reset()
    cfg = tb.config
    for _ in range(6):
        depth = tb.rng.randint(1, 2 * (cfg.rows + cfg.cols) + 4)
        tb.add_tile(*tb.random_tile(depth))
    await tb.run(_max_cycles(tb))
    tb.check()


@cocotb.test()
async def corner_operands(dut):
    """-128/127 extremes (largest products of both signs), zero tiles and one-deep tiles."""
    tb = ArrayTB(dut, seed=2)
    await tb.reset()
    cfg = tb.config
    depth = cfg.rows + 1
    for low, high in ((INT8_MIN, INT8_MIN), (INT8_MAX, INT8_MAX), (0, 0), (INT8_MIN, INT8_MAX)):
        a, b = tb.random_tile(depth, low, high)
        tb.add_tile(a, b)
    a, b = tb.random_tile(depth, INT8_MIN, INT8_MIN)
    tb.add_tile(a, -b - 1)          # -128 x 127: most negative products
    for _ in range(3):
        tb.add_tile(*tb.random_tile(1))
    await tb.run(_max_cycles(tb))
    tb.check()


@cocotb.test()
async def back_to_back_no_bubble(dut):
    """With inputs always valid and output always ready, tiles follow each other without a
    single idle cycle: the cycle count is exactly what a bubble-free pipeline implies."""
    tb = ArrayTB(dut, seed=3)
    await tb.reset()
    cfg = tb.config
    tiles = 4
    if cfg.dataflow is Dataflow.WS:
        # A tile is long enough to hide the next weight load behind it.
        depth = ws_bank_drain(cfg) + cfg.rows + 2
        stream = tb.sources["acts"]
    else:
        depth = os_tile_interval(cfg)
        stream = tb.sources["operands"]
    for _ in range(tiles):
        tb.add_tile(*tb.random_tile(depth))
    await tb.run(_max_cycles(tb))
    tb.check()
    acc = stream.accept_cycles
    assert acc[-1] - acc[0] == tiles * depth - 1, (
        f"input beats took {acc[-1] - acc[0] + 1} cycles for {tiles * depth} beats")
    out = tb.sink.cycles
    if cfg.dataflow is Dataflow.WS:
        assert out[0] - acc[0] == latency(cfg), f"first result after {out[0] - acc[0]} cycles"
        assert out[-1] - out[0] == tiles * depth - 1, (
            f"{len(out)} results spread over {out[-1] - out[0] + 1} cycles")
    else:
        first_last = acc[depth - 1]
        assert out[0] - first_last == latency(cfg), f"first row after {out[0] - first_last} cycles"
        assert out[-1] - acc[-1] == latency(cfg) + cfg.rows - 1


@cocotb.test()
async def accumulator_wraps(dut):
    """OS only: a long K of (-128)*(-128) overflows int32 and must wrap (two's complement)."""
    tb = ArrayTB(dut, seed=4)
    cfg = tb.config
    await tb.reset()
    if cfg.dataflow is not Dataflow.OS:
        # WS sums at most `rows` products in the array (|sum| < 2**21): wrap-around is the
        # accumulator memory's job there. Check the largest in-array sum instead.
        depth = 2
    else:
        depth = 2**31 // (128 * 128) + 3
    a, b = tb.random_tile(depth, INT8_MIN, INT8_MIN)
    tb.add_tile(a, b)
    await tb.run(_max_cycles(tb))
    tb.check()
    if cfg.dataflow is Dataflow.OS:
        assert tb.expected[0][0] < 0, "the reference sum did not wrap; the test is void"
