"""The NeuralMatrix compiler and golden model.

Pipeline, one module per stage: ``frontend`` (ONNX import, opset conversion, static shapes,
constant folding, the unsupported-op report) -> ``quantize`` (int8 calibration) -> the
lowering (every op to GEMM kernels, PWL tables and host data movement, the IR of ``ir``) ->
``codegen`` and ``gemm_program`` (tiling, programs, memory image) -> ``runtime`` (the host
loop). ``golden`` runs the programs bit-exact in numpy with a cycle estimate; ``compiler`` is
``neuralmatrix compile``; ``accuracy`` measures int8 + PWL against the float model.
"""
