"""pulse, rebuilt: active/backup heartbeat, VIP takeover and gratuitous ARP."""
