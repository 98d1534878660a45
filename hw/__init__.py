"""The accelerator generator: Amaranth 0.5 components of the NeuralMatrix GEMM accelerator.

One :class:`~neuralmatrix.hw.params.HwConfig` holds every hardware parameter; the ISA
(:mod:`~neuralmatrix.hw.isa`) and the arithmetic contract (:mod:`~neuralmatrix.hw.arith`)
live here once and are imported by the compiler, the golden model and the testbenches.

Modules
-------
params       hardware parameters and their checks
arith        int8/int32 arithmetic, requantization and PWL evaluation (the contract)
isa          instruction encoding, validation, deadlock and race checks
pe, systolic the processing element and the ``rows x cols`` array (ws and os dataflows)
load_unit, compute_unit, store_unit, outpath, readpipe, dram, counters
             the decoupled units, the requantization/PWL output path, skid buffers,
             the external-memory port and the performance counters
accelerator  the top level; generate: Verilog export
"""
