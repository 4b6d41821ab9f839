"""The reliability suite of issue 15 (`python -m bench.reliability`): harness.py (processes,
producer, checkpoint counts), fuzz.py (R1, R5, R6), crash.py (R2, R3), load.py (R4, R7)."""
