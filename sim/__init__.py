"""Co-simulation of the generated RTL: cocotb 2.x testbenches on Verilator (and Icarus).

The runner builds (and caches) a simulator per hardware configuration; programs and memory
images are loaded in bulk through a C++ back door and the RTL runs each program to ``done``
by itself, so Python is never in the per-cycle loop. :mod:`~neuralmatrix.sim.run_cmd` is
``neuralmatrix run`` (whole networks on the RTL, bit-exact against the golden model, with
per-layer reports from the performance counters); :mod:`~neuralmatrix.sim.benchmarks`
prints the simulation and utilization figures of ``sim/PERFORMANCE.md``.
"""
