"""The lvs-router daemon: health checks (nanny), director (lvsd), heartbeat (pulse), VIPs."""
