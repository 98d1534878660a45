"""Processing elements of the systolic array: one pipelined int8 x int8 -> int32 MAC each.

Both PEs register the multiplier's operands and its product before the add
(:data:`PRODUCT_STAGES` cycles from an operand arriving to its product entering the sum), so
the multiplier (one MULT18X18D on ECP5) sits alone between two registers and the 32-bit adder
gets a cycle of its own. The extra stages are the same in every PE, so the skew between
neighbours is unchanged; only the array's latency grows (:func:`.systolic.latency`).

A PE built with ``dsp=False`` forms the same product from logic (:func:`.mult.logic_product`,
no ``*``, so Yosys infers no DSP block) in the same stage: latency and results are identical.
Which PEs get a DSP block is decided by :meth:`.params.HwConfig.dsp_pes`.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .mult import logic_product
from .params import Dataflow, HwConfig

__all__ = ["PRODUCT_STAGES", "WeightStationaryPE", "OutputStationaryPE", "make_pe"]

#: Cycles from a PE's operands arriving (``a_in`` and the weight, or ``a_in``/``b_in``) to
#: their product being added: operand registers, then the product register.
PRODUCT_STAGES = 2


class WeightStationaryPE(wiring.Component):
    """Weight-stationary PE with two weight banks.

    Each cycle with ``en`` high the PE takes ``a_in`` and ``w[bank_in]``; their product is added
    :data:`PRODUCT_STAGES` advances later: ``psum_out <= psum_in + p`` with ``p`` the product
    of the operands taken ``PRODUCT_STAGES`` advances before (so ``psum_in`` must arrive that
    much after its ``a_in``, as it does in the array). ``a_in`` and ``bank_in`` move one PE to
    the right, registered. Weights are loaded by shifting them down the column:
    when ``w_shift`` is high, bank ``w_bank`` takes ``w_in`` and ``w_out`` shows that bank, so
    ``rows`` shifts fill a column. The bank that ``bank_in`` selects may be in use while the other
    one is loaded, which is what lets weight tiles follow each other with no bubble.

    Parameters
    ----------
    config : HwConfig
    dsp : bool
        True: the product is ``a * w`` (a DSP block); False: built from logic.

    Members
    -------
    en : In(1)
        Global advance; nothing changes while it is low.
    a_in, a_out : In/Out(signed(operand_width))
        Activation from the left, registered to the right.
    bank_in, bank_out : In/Out(1)
        Weight bank that travels with the activation.
    psum_in, psum_out : In/Out(signed(acc_width))
        Partial sum from above, registered downwards.
    w_in, w_out : In/Out(signed(operand_width))
        Weight shift chain (from above, to below).
    w_shift, w_bank : In(1)
        Shift enable and the bank being loaded.
    """

    def __init__(self, config: HwConfig, *, dsp: bool = True):
        self._config = config
        self._dsp = _check_dsp(dsp)
        ow, aw = config.operand_width, config.acc_width
        super().__init__({
            "en": In(1),
            "a_in": In(signed(ow)), "a_out": Out(signed(ow)),
            "bank_in": In(1), "bank_out": Out(1),
            "psum_in": In(signed(aw)), "psum_out": Out(signed(aw)),
            "w_in": In(signed(ow)), "w_out": Out(signed(ow)),
            "w_shift": In(1), "w_bank": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        ow, aw = self._config.operand_width, self._config.acc_width
        # Datapath registers need no reset: validity travels in the array's control bits.
        w = [Signal(signed(ow), name=f"w{i}", reset_less=True) for i in range(2)]
        a = Signal(signed(ow), reset_less=True)         # operand register (also a_out)
        weight = Signal(signed(ow), reset_less=True)    # operand register: w[bank_in]
        bank = Signal(reset_less=True)
        product = Signal(signed(2 * ow), reset_less=True)
        psum = Signal(signed(aw), reset_less=True)
        m.d.comb += [
            self.w_out.eq(Mux(self.w_bank, w[1], w[0])),
            self.a_out.eq(a), self.bank_out.eq(bank), self.psum_out.eq(psum),
        ]
        with m.If(self.en):
            m.d.sync += [
                a.eq(self.a_in),
                weight.eq(Mux(self.bank_in, w[1], w[0])),
                bank.eq(self.bank_in),
                product.eq(_product(m, a, weight, self._dsp)),
                # Truncation to acc_width is the two's-complement wrap of the contract.
                psum.eq((self.psum_in + product)[:aw]),
            ]
            with m.If(self.w_shift):
                m.d.sync += w[0].eq(Mux(self.w_bank, w[0], self.w_in))
                m.d.sync += w[1].eq(Mux(self.w_bank, self.w_in, w[1]))
        return m


class OutputStationaryPE(wiring.Component):
    """Output-stationary PE: accumulates one element of the output tile.

    Each cycle with ``en`` high the PE takes ``a_in``, ``b_in`` and the flags; their product is
    added :data:`PRODUCT_STAGES` advances later: ``acc <= (first ? 0 : acc) + a * b``.
    ``a_in`` and the flags move right, ``b_in`` moves down, registered. For the operands taken
    with ``last_in`` high the finished sum is copied into ``result``, which holds while the
    next tile accumulates; ``done`` is high in the cycle it appears there (``PRODUCT_STAGES``
    advances after ``last_out``).

    Parameters
    ----------
    config : HwConfig
    dsp : bool
        True: the product is ``a * b`` (a DSP block); False: built from logic.

    Members
    -------
    en : In(1)
        Global advance.
    a_in, a_out : In/Out(signed(operand_width))
        Row operand, from the left, registered to the right.
    b_in, b_out : In/Out(signed(operand_width))
        Column operand, from above, registered downwards.
    first_in, first_out, last_in, last_out : In/Out(1)
        Tile boundary flags, travelling with ``a``.
    result : Out(signed(acc_width))
        The last finished output element.
    done : Out(1)
        ``result`` was written by the last advance.
    """

    def __init__(self, config: HwConfig, *, dsp: bool = True):
        self._config = config
        self._dsp = _check_dsp(dsp)
        ow, aw = config.operand_width, config.acc_width
        super().__init__({
            "en": In(1),
            "a_in": In(signed(ow)), "a_out": Out(signed(ow)),
            "b_in": In(signed(ow)), "b_out": Out(signed(ow)),
            "first_in": In(1), "first_out": Out(1),
            "last_in": In(1), "last_out": Out(1),
            "result": Out(signed(aw)), "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        ow, aw = self._config.operand_width, self._config.acc_width
        # Operand and sum registers need no reset: `first` restarts every accumulation.
        acc = Signal(signed(aw), reset_less=True)
        total = Signal(signed(aw))
        # Operand registers (a and b are also a_out/b_out), then the product register; the
        # flags are delayed to match the product.
        a, b = Signal(signed(ow), reset_less=True), Signal(signed(ow), reset_less=True)
        product = Signal(signed(2 * ow), reset_less=True)
        first_p, last_p = Signal(), Signal()
        result = Signal(signed(aw), reset_less=True)
        m.d.comb += [
            total.eq((Mux(first_p, 0, acc) + product)[:aw]),
            self.a_out.eq(a), self.b_out.eq(b), self.result.eq(result),
        ]
        with m.If(self.en):
            m.d.sync += [
                a.eq(self.a_in),
                b.eq(self.b_in),
                self.first_out.eq(self.first_in),
                self.last_out.eq(self.last_in),
                product.eq(_product(m, a, b, self._dsp)),
                first_p.eq(self.first_out),
                last_p.eq(self.last_out),
                acc.eq(total),
                self.done.eq(last_p),
            ]
            with m.If(last_p):
                m.d.sync += result.eq(total)
        return m


def make_pe(config: HwConfig, *, dsp: bool = True) -> wiring.Component:
    """The PE for ``config.dataflow``, its multiplier a DSP block (*dsp*) or logic."""
    cls = {Dataflow.WS: WeightStationaryPE, Dataflow.OS: OutputStationaryPE}[config.dataflow]
    return cls(config, dsp=dsp)


def _check_dsp(dsp) -> bool:
    if not isinstance(dsp, bool):
        raise TypeError(f"dsp must be a bool, not {dsp!r}")
    return dsp


def _product(m: Module, a, b, dsp: bool):
    """``a * b``: inferred (a DSP block) or from logic (its signals added to *m*)."""
    return a * b if dsp else logic_product(m, a, b)
