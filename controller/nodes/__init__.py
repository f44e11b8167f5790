"""The production cycle's graph nodes, one module each; `controller/graph.py` wires them.

A node observes through the line's adapters, calls an agent's pure decision, applies the
actions through adapters and audits each one, keyed by the cycle so a re-run after a crash
finds its earlier effects.
"""
