/* lb_structs.h: the structs shared by the program and dataplane/maps.py.
 * Network byte order is in the field types (__be32/__be16); padding is explicit so
 * that sizes match the ctypes layouts, which maps.py checks against bcc at load. */

struct service_key {          /* services: (VIP, port, protocol); port 0 = all ports */
    __be32 vip;
    __be16 port;
    __u8 proto;
    __u8 pad;
};

struct service {
    __u32 index;              /* row in rings, service_stats */
    __u32 flags;              /* SVC_F_* */
    __u32 persist_s;          /* persistence timeout in seconds (SVC_F_PERSIST) */
    __be32 pmask;             /* persistence netmask applied to the source address */
};

struct service_info {         /* service_info[index]: the service that index holds now, so
                                 that a tracked flow is checked without a hash lookup */
    struct service_key key;   /* port 0: every port */
    struct service svc;
};

struct vip_key {              /* vips: is this (address, protocol) a VIP at all? */
    __be32 vip;
    __u8 proto;
    __u8 pad[3];
};

struct real {
    __be32 addr;              /* real server address (tunnel destination) */
    __u8 mac[6];              /* next hop: the real server itself for direct routing */
    __u16 flags;              /* REAL_F_* */
};

struct flow_key {
    __be32 saddr;
    __be32 daddr;
    __be16 sport;
    __be16 dport;
    __u8 proto;
    __u8 pad[3];
};

struct flow_state {           /* one way of a conntrack or nat_rev set: 32 bytes */
    __u32 real;               /* index in reals */
    __be32 addr;              /* that real's address when chosen: stale if it changed */
    __u32 service;            /* index in service_info: stale if it holds another key */
    __u32 hash;               /* conntrack: flow_hash() of the key (the tunnel's outer
                                 source); nat_rev: ct_hash() of the flow's conntrack key */
    __u64 last_ns;            /* NAT: nat_now() of the flow's last packet, either way */
    union {
        __u8 mac[6];          /* conntrack, NAT: the client side's next hop (the inbound
                                 source MAC) */
        struct {              /* nat_rev: the flow's VIP and port (the reply's source) */
            __be32 vip;
            __be16 vport;
        } __attribute__((packed));
    };
    __u8 closing;             /* NAT: FIN or RST seen, tcpfin_timeout applies */
    __u8 used;                /* CT_USED, or CT_COUNTED (lc family); 0: free */
};

/* A set of the connection table (conntrack, nat_rev: arrays of CT_SETS sets; a key's
 * set is ct_hash(key) & (CT_SETS - 1)). seq is a sequence lock for writers on any
 * CPU: odd while one CPU inserts; a reader that sees it change (or odd) ignores what
 * it read. What an insert scans (stamps, keys) comes first, in 3 cache lines; a hit
 * reads the keys and one 32-byte value. */
struct ct_set {
    __u64 seq;
    __u32 tick;               /* +1 for every packet that touches the set (never 0) */
    __u32 pad;
    __u32 stamp[CT_WAYS];     /* the tick at the way's last packet: LRU order; 0: free */
    struct flow_key key[CT_WAYS];
    struct flow_state val[CT_WAYS];
};

struct nat_config {           /* nat_config[0], written by the loader */
    __u8 priv_mac[6];         /* source MAC of frames to the real servers */
    __u8 pub_mac[6];          /* source MAC of replies to the clients */
    __u32 ns_per_jiffy;       /* 1e9 / the kernel's HZ: the NAT clock counts jiffies */
    __u64 tcp_ns;             /* idle timeout of an established TCP flow */
    __u64 tcpfin_ns;          /* ... after a FIN or RST */
    __u64 udp_ns;             /* ... of a UDP flow */
    __u64 clock_offset_ns;    /* added to bpf_ktime_get_ns(): tests move time forward */
};

struct persist_key {
    __u32 service;
    __be32 client;            /* source address & pmask */
};

struct persist_state {
    __u32 real;
    __be32 addr;
    __u64 last_ns;            /* bpf_ktime_get_ns() of the client's last packet */
};

struct counters {
    __u64 packets;
    __u64 bytes;
    __u64 new_flows;
};

struct lb_globals {
    __be32 tunnel_src;        /* outer source of IPIP packets ... */
    __be32 tunnel_src_vary;   /* ... with these bits taken from the flow hash (RSS) */
};

struct packet {               /* what parsing found; not shared with Python */
    struct flow_key flow;
    __u32 len;
    __u8 tcp_flags;
};
