"""FPGA flows for the generated accelerator, on the pip-installed yowasp Yosys and nextpnr.

``neuralmatrix synth`` (area and Fmax on ECP5 / iCE40, with the critical path),
``neuralmatrix sweep`` (resumable array-size sweeps on local processes or a Dask cluster, CSV
and plots), ``neuralmatrix power`` (an activity-based ECP5 power model), ``neuralmatrix
cpu-compare`` (throughput per watt against this machine's CPU) and ``neuralmatrix bitstream``
(the ULX3S board top with its UART host link). Results: ``fpga/RESULTS.md``.
"""
