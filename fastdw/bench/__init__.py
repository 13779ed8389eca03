"""fastdw's benchmarks: what they time (providers), how (measure), the modelled GPU figures
(modelled) and `python -m fastdw bench` (run, report)."""
