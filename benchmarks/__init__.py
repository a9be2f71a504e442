"""
The benchmarks: speed and memory of this codebase against transformers, side by side in one process
(`python -m benchmarks [section ...]`; its --help lists the sections and the method). One module per family:
common.py (sizes, same weights on both sides, interleaved timing, table rows), inference.py (inference, table3),
training.py (train, loss-memory), loading.py (data, loader), cpu.py (cpu-bf16, cpu-share), gpu.py (gpu),
run.py (quiet-machine waits, results files and table).
"""
