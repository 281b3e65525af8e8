"""RAGraph: the brain of Hedra. Workflow graphs, the sans-IO scheduler core and policies.

Imports no simulator, engine, index, clock, thread or I/O library (a test checks it).
"""
