"""nanny, rebuilt: per-real-server health checks (pure state machine + asyncio probes)."""
