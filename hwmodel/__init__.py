"""The simulator's hardware model: the profile schema, the latency functions and the shipped profiles.

A leaf package (DESIGN §2): the simulator, the real body and the policies' cost estimates read it;
it imports none of them. Profiling, fitting and validation (`calibration/`) sit above both bodies.
"""
