"""The verifier role: counts measurable and viewable impressions (IAB/MRC)."""
