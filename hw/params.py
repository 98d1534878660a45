"""Hardware parameters of the NeuralMatrix accelerator: the one place they are stated.

The generator, the testbenches, the compiler and the golden model all take an
:class:`HwConfig`; none of them restates a width, a size or a limit.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields

__all__ = ["Dataflow", "HwConfig", "ConfigError", "MULTIPLIERS"]


class ConfigError(ValueError):
    """An impossible hardware parameter; the message names it, the allowed range and the value."""


class Dataflow(str, enum.Enum):
    """How operands move through the systolic array.

    ``WS`` (weight-stationary): a ``rows x cols`` weight tile is preloaded into the PEs (double
    buffered); activation vectors of length ``rows`` stream through; each produces a partial-sum
    vector of length ``cols``.

    ``OS`` (output-stationary): every PE owns one output element; a column of A (length ``rows``)
    and a row of B (length ``cols``) enter per cycle; a finished ``rows x cols`` tile drains while
    the next one accumulates.
    """

    WS = "ws"
    OS = "os"

    def __str__(self) -> str:
        return self.value


# (name, minimum, maximum) of the integer parameters; one table drives validation and --help.
_RANGES: dict[str, tuple[int, int]] = {
    "rows": (1, 64),
    "cols": (1, 64),
    "sp_depth": (16, 1 << 16),
    "acc_depth": (16, 1 << 16),
    "pwl_segments": (2, 64),
    "pwl_tables": (1, 8),
    "queue_depth": (2, 256),
    "dram_latency": (1, 64),
}

#: Where the PEs' int8 x int8 multipliers are built (``HwConfig.multipliers``):
#: ``dsp`` every PE on a DSP block (Yosys infers one from ``*``); ``logic`` every PE in LUTs
#: (:mod:`.mult`, a radix-4 Booth multiplier); ``auto`` as many PEs on DSP blocks as
#: ``dsp_budget`` leaves after the rest of the top's multipliers, the others in logic.
MULTIPLIERS = ("dsp", "logic", "auto")

# Parameters that must be powers of two.
_POW2 = ("sp_depth", "acc_depth", "pwl_segments", "bus_bytes")

# Parameters with a fixed set of supported values.
_CHOICES: dict[str, tuple] = {
    "operand_width": (8,),
    "acc_width": (32,),
}


@dataclass(frozen=True)
class HwConfig:
    """Parameters of one generated accelerator.

    Parameters
    ----------
    rows : int
        Systolic array rows, 1..64. In WS this is the reduction (K) depth of a weight tile;
        in OS the number of output rows (M) of a tile.
    cols : int
        Systolic array columns, 1..64: the output width (N) of a tile in both dataflows.
    dataflow : Dataflow or str
        ``"ws"`` or ``"os"``.
    operand_width : int
        Width of the signed operands; only 8 is supported.
    acc_width : int
        Width of the signed accumulators (two's-complement wrap-around); only 32 is supported.
    sp_depth : int
        Input scratchpad rows (power of two, 16..65536); a row holds ``sp_row`` int8 elements.
    acc_depth : int
        Accumulator rows (power of two, 16..65536); a row holds ``cols`` int32 elements.
    bus_bytes : int or None
        External memory data width in bytes (power of two, 4..64, at least ``sp_row``).
        ``None`` picks the smallest allowed: one scratchpad row per beat.
    pwl_segments : int
        Segments per PWL table (power of two, 2..64).
    pwl_tables : int
        PWL tables resident in the output path (1..8).
    queue_depth : int
        Depth of each unit's instruction queue (2..256).
    dram_latency : int
        Cycles from a read request to its first data beat in the simulated external memory.
    multipliers : str
        Where the PE multipliers are built: ``"dsp"`` (default), ``"logic"`` or ``"auto"``
        (see :data:`MULTIPLIERS`). The array's latency and arithmetic are the same for all three.
    dsp_budget : int or None
        ``auto`` only (and required there): DSP blocks the generated top may use, e.g. the
        target device's count. The FPGA flow fills it in from ``--device``.
    """

    rows: int = 8
    cols: int = 8
    dataflow: Dataflow = Dataflow.WS
    operand_width: int = 8
    acc_width: int = 32
    sp_depth: int = 4096
    acc_depth: int = 1024
    bus_bytes: int | None = None
    pwl_segments: int = 16
    pwl_tables: int = 4
    queue_depth: int = 32
    dram_latency: int = 8
    multipliers: str = "dsp"
    dsp_budget: int | None = None

    def __post_init__(self) -> None:
        for name, (lo, hi) in _RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"{name} must be {lo}..{hi}, got {value!r}")
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                choices = ", ".join(map(str, allowed))
                raise ConfigError(f"{name} must be one of {choices}, got {value!r}")
        try:
            dataflow = Dataflow(self.dataflow)
        except ValueError:
            raise ConfigError(f"dataflow must be one of ws, os, got {self.dataflow!r}") from None
        object.__setattr__(self, "dataflow", dataflow)
        if self.multipliers not in MULTIPLIERS:
            raise ConfigError(f"multipliers must be one of {', '.join(MULTIPLIERS)}, "
                              f"got {self.multipliers!r}")
        budget = self.dsp_budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)
                                   or budget < 0):
            raise ConfigError(f"dsp_budget must be a non-negative integer, got {budget!r}")
        if self.multipliers == "auto" and budget is None:
            raise ConfigError("multipliers=auto needs dsp_budget (the DSP blocks of the target "
                              "device; the FPGA flow takes it from the device)")
        if self.multipliers != "auto" and budget is not None:
            raise ConfigError(f"dsp_budget applies to multipliers=auto only, got "
                              f"multipliers={self.multipliers!r} with dsp_budget={budget}")
        sp_row = max(self.rows, self.cols)
        if self.bus_bytes is None:
            object.__setattr__(self, "bus_bytes", max(4, 1 << (sp_row - 1).bit_length()))
        value = self.bus_bytes
        if isinstance(value, bool) or not isinstance(value, int) or not 4 <= value <= 64:
            raise ConfigError(f"bus_bytes must be 4..64, got {value!r}")
        if value < sp_row:
            raise ConfigError(f"bus_bytes must be at least max(rows, cols) = {sp_row} "
                              f"(one scratchpad row per beat), got {value}")
        for name in _POW2:
            value = getattr(self, name)
            if value & (value - 1):
                raise ConfigError(f"{name} must be a power of two, got {value}")

    @property
    def sp_row(self) -> int:
        """int8 elements in one scratchpad row: ``max(rows, cols)``."""
        return max(self.rows, self.cols)

    @property
    def acc_row_beats(self) -> int:
        """External-memory beats of one int32 accumulator row (``cols * 4`` bytes)."""
        return -(-4 * self.cols // self.bus_bytes)

    def dsp_pes(self, reserved: int = 0) -> int:
        """PEs whose multiplier is a DSP block: all (``dsp``), none (``logic``), or (``auto``)
        ``dsp_budget - reserved`` clamped to ``0..rows*cols``, *reserved* being the DSP
        blocks the rest of the top needs. PEs are assigned row by row from PE (0, 0)."""
        pes = self.rows * self.cols
        if self.multipliers == "dsp":
            return pes
        if self.multipliers == "logic":
            return 0
        return max(0, min(pes, self.dsp_budget - reserved))

    @property
    def tag(self) -> str:
        """A short name for build directories and reports, e.g. ``ws_8x8`` (``ws_8x8_logic``,
        ``ws_16x16_auto156`` when the multipliers are not all on DSP blocks)."""
        tag = f"{self.dataflow.value}_{self.rows}x{self.cols}"
        if self.multipliers == "logic":
            tag += "_logic"
        elif self.multipliers == "auto":
            tag += f"_auto{self.dsp_budget}"
        return tag

    def as_dict(self) -> dict:
        """Plain values of every parameter (for JSON reports)."""
        return {f.name: str(getattr(self, f.name)) if f.name == "dataflow" else getattr(self, f.name)
                for f in fields(self)}

    @staticmethod
    def describe(name: str) -> str:
        """Allowed values of parameter *name*, for command-line help."""
        if name in _RANGES:
            lo, hi = _RANGES[name]
            return f"{lo}..{hi}"
        if name in _CHOICES:
            return ", ".join(map(str, _CHOICES[name]))
        if name == "dataflow":
            return "ws, os"
        if name == "multipliers":
            return ", ".join(MULTIPLIERS)
        if name == "dsp_budget":
            return "a non-negative integer (multipliers=auto only)"
        if name == "bus_bytes":
            return "4..64, power of two, >= max(rows, cols)"
        raise KeyError(name)
