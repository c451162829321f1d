"""The local chain: every role as a process on loopback (`adchain up`)."""
