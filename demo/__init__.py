"""``make demo``: two lvs-routers, three web servers and a client in network namespaces."""
