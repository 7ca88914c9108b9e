"""Speed comparisons against the real alternatives (scikit-learn, PyTorch CPU), side by side.

Each ``python -m benchmarks.<name> [--quick] [--out FILE]`` prints a markdown table and writes
JSON rows ``{case, ours_s, anchor, anchor_s, ratio, compile_s, agreement}`` (the contract is in the README's Benchmarks section; measurements and
analysis in benchmarks/README.md).
"""
