"""The one way a role is served: configuration, gRPC server, health,
reflection, metrics endpoint, RPC metrics and graceful shutdown."""
