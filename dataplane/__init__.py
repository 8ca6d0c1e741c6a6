"""Dataplanes driven declaratively from the model: kernel IPVS (netlink) and XDP."""
