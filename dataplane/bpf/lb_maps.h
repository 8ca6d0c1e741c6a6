/* lb_maps.h: map definitions and nothing else. LB_MAP (from lb.bpf.c.j2) pins a map
 * under the pin directory when the loader asks for it, so that a new program, or a
 * restarted daemon, adopts the maps (and the tracked flows) of the old one. */

LB_MAP("hash", struct service_key, struct service, services, MAX_SERVICES, 0);
LB_MAP("array", __u32, struct service_info, service_info, MAX_SERVICES, 0);
LB_MAP("array", __u32, __u32, service_hints, SVC_HINTS, 0); /* find_service() */
LB_MAP("hash", struct vip_key, __u32, vips, MAX_SERVICES, 0);
LB_MAP("array", __u32, struct real, reals, MAX_REALS, 0);
/* the least-connection family: open flows per real (BPF, atomic adds), each real's
 * weight (written by sync) (scheduling.h lc_pick) */
LB_MAP("array", __u32, __u32, real_conns, MAX_REALS, 0);
LB_MAP("array", __u32, __u32, real_weights, MAX_REALS, 0);
LB_MAP("array", __u32, __u32, rings, MAX_SERVICES * RING_SIZE, 0);
/* the connection table: CT_SETS sets of CT_WAYS flows, LRU replacement in each set (conntrack.h) */
LB_MAP("array", __u32, struct ct_set, conntrack, CT_SETS, 0);
LB_MAP("lru_hash", struct persist_key, struct persist_state, persist, PERSIST_SIZE, 0);
LB_MAP("array", __u32, struct lb_globals, globals, 1, 0);
LB_MAP("percpu_array", __u32, struct counters, service_stats, MAX_SERVICES, 0);
LB_MAP("percpu_array", __u32, struct counters, real_stats, MAX_REALS, 0);
LB_MAP("percpu_array", __u32, __u64, global_stats, GLOBAL_COUNTERS, 0);
/* NAT: reply key -> the flow's VIP side (a second table like conntrack); port per real
 * server; where frames go out (tx_ports[NAT_TX_PRIVATE], tx_ports[NAT_TX_PUBLIC]:
 * ifindexes); MACs and timeouts */
LB_MAP("array", __u32, struct ct_set, nat_rev, CT_SETS, 0);
LB_MAP("array", __u32, __be16, real_ports, MAX_REALS, 0);
BPF_DEVMAP(tx_ports, 2); /* bcc cannot pin it; configure_nat() rewrites it anyway */
LB_MAP("array", __u32, struct nat_config, nat_config, 1, 0);
