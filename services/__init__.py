"""adchain's gRPC services: DSP, SSP (exchange), ad server and verifier.

Each role lives in its own package and meets the others only through the
protos; `services.runtime` is the one way any role is configured and served.
"""
