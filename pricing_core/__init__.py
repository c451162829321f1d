"""pricing_core: the Numba engine behind every bid (DSP), every clearing (SSP) and every
billed micro. Money is int64 micros everywhere; see `money` for the one rounding rule."""
