"""Calibration: profile the real body, fit the hardware model's latency functions, and
validate the simulator against the real body (DESIGN §7).

It drives both bodies, so it sits above `sim` and `backends`; the model it fits
(`hwmodel`) is a leaf below them.
"""
