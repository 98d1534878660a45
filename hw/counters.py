"""The accelerator's control ports, performance counters and status, as read by testbenches.

:func:`control_members` is the set of ports every core hosted by a simulation top has (the
accelerator, and stand-ins in tests); ``counters`` and ``status`` follow the layouts below, so
a testbench unpacks them with the same definition the RTL uses.
"""

from __future__ import annotations

from amaranth.lib import data
from amaranth.lib.wiring import In, Out

__all__ = ["COUNTER_BITS", "COUNTERS", "counter_layout", "status_layout", "control_members"]

COUNTER_BITS = 48

#: name -> meaning; every counter is COUNTER_BITS wide and counts from ``start``.
COUNTERS: dict[str, str] = {
    "cycles": "cycles from start to done",
    "insns": "instructions fetched (HALT included)",
    "load_busy": "cycles the load unit executed an instruction",
    "load_stall": "cycles the load unit waited for a dependency token",
    "compute_busy": "cycles the compute unit executed an instruction",
    "compute_stall": "cycles the compute unit waited for a dependency token",
    "store_busy": "cycles the store unit executed an instruction",
    "store_stall": "cycles the store unit waited for a dependency token",
    "array_active": "cycles an operand beat entered the systolic array",
    "macs": "useful multiply-accumulates (m * k * n per COMPUTE)",
    "pwl_evals": "elements that went through the PWL unit",
    "bytes_read": "bytes read from external memory (instructions included)",
    "bytes_written": "bytes written to external memory",
}


def counter_layout() -> data.StructLayout:
    return data.StructLayout({name: COUNTER_BITS for name in COUNTERS})


def status_layout() -> data.StructLayout:
    """Unit states, for diagnosing a program that does not finish."""
    return data.StructLayout({
        "fetching": 1,        # fetch unit has not reached HALT
        "load_busy": 1,
        "compute_busy": 1,
        "store_busy": 1,
        "load_waiting": 1,    # head instruction waits for a token
        "compute_waiting": 1,
        "store_waiting": 1,
        "load_queue": 9,      # instructions queued per unit
        "compute_queue": 9,
        "store_queue": 9,
        "pc": 32,             # address of the next instruction fetched
    })


def control_members() -> dict:
    """Signature members of a core's control interface.

    ``start`` (In, one-cycle pulse) begins a program at ``insn_addr`` (In, 32 bits); ``done``
    (Out) rises when it finished or stopped on an error; ``error``, ``error_code`` (4 bits) and
    ``error_pc`` (32 bits) describe the error; ``counters`` and ``status`` as laid out above.
    """
    return {
        "start": In(1),
        "insn_addr": In(32),
        "done": Out(1),
        "error": Out(1),
        "error_code": Out(4),
        "error_pc": Out(32),
        "counters": Out(counter_layout()),
        "status": Out(status_layout()),
    }
