/* ipv6_maps.h: the IPv6 path's structs and maps (feature ipv6 only; maps.py mirrors
 * the structs). An IPv6 service shares everything that is indexed, not keyed, with
 * IPv4: its index (service_stats, rings), its reals (real_stats; reals[i].addr holds
 * a 32-bit tag of the IPv6 address, maps.addr_word, so a flow whose index now holds
 * another server is rescheduled as for IPv4). What is keyed by address has its own
 * map: services6, service_info6 (checked against a tracked flow, and against a
 * service_hints6 slot on a new flow), vips6 (odd
 * packets), conntrack6, the IPv6 connection table (conntrack.h rendered for
 * struct flow_key6: same geometry, same LRU and sequence lock), and persist6, the
 * persistence templates by masked 128-bit source (scheduling6.h). The least-
 * connection counts (real_conns, real_weights) are indexed by real: shared. */

struct service_key6 {         /* services6: (VIP, port, protocol); port 0 = all ports */
    __be32 vip[4];
    __be16 port;
    __u8 proto;
    __u8 pad;
};

struct service_info6 {        /* service_info6[index]: the IPv6 service that index holds */
    struct service_key6 key;
    struct service svc;
};

struct vip_key6 {             /* vips6: is this address a VIP (any protocol)? */
    __be32 vip[4];
};

struct flow_key6 {            /* 40 bytes: five 64-bit words for the table's compares */
    __be32 saddr[4];
    __be32 daddr[4];
    __be16 sport;
    __be16 dport;
    __u8 proto;
    __u8 pad[3];
} __attribute__((aligned(8)));

struct ct6_set {              /* as struct ct_set, with IPv6 keys: 624 bytes */
    __u64 seq;
    __u32 tick;
    __u32 pad;
    __u32 stamp[CT_WAYS];
    struct flow_key6 key[CT_WAYS];
    struct flow_state val[CT_WAYS];
};

struct real6 {                /* reals6[index]: an IPv6 real's address (the IP6IP6 outer
                                 destination; reals[index] has the rest) */
    __be32 addr[4];
};

struct persist_key6 {         /* persist6: the service and the source & its prefix */
    __u32 service;
    __be32 client[4];
};

struct packet6 {              /* what parse6 found; not shared with Python */
    struct flow_key6 flow;
    __u32 len;
    __u8 tcp_flags;
};

LB_MAP("hash", struct service_key6, struct service, services6, MAX_SERVICES, 0);
LB_MAP("array", __u32, struct service_info6, service_info6, MAX_SERVICES, 0);
LB_MAP("array", __u32, __u32, service_hints6, SVC_HINTS, 0); /* ipv6.h find_service6 */
LB_MAP("hash", struct vip_key6, __u32, vips6, MAX_SERVICES, 0);
LB_MAP("array", __u32, struct ct6_set, conntrack6, CT_SETS, 0);
LB_MAP("array", __u32, struct real6, reals6, MAX_REALS, 0);
LB_MAP("lru_hash", struct persist_key6, struct persist_state, persist6, PERSIST_SIZE, 0);
