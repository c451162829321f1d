"""The DSP role: bids on OpenRTB requests, counts wins and billed spend."""
