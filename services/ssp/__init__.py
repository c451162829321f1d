"""The SSP (exchange) role: runs the auction, counts an impression on ad return."""
