/* lb_consts.h: every size, flag and counter slot of the XDP load balancer.
 * Sizes sit behind #ifndef so the loader (or a test) can pass -D; the Python side
 * reads the same numbers from dataplane.bpf.render.Sizes, never from a copy. */

#ifndef MAX_SERVICES
#define MAX_SERVICES 64        /* virtual services (and Maglev tables) */
#endif
#ifndef MAX_REALS
#define MAX_REALS 1024         /* real-server entries; index 0 is never used */
#endif
#ifndef RING_SIZE
#define RING_SIZE 65537        /* Maglev table size per service: a prime */
#endif
#ifndef CT_SIZE
#define CT_SIZE 262139         /* tracked flows wanted (lvs.cf / Sizes.ct_size) */
#endif
#ifndef CT_WAYS
#define CT_WAYS 8              /* entries per set of the connection table */
#endif
#ifndef SVC_HINTS
#define SVC_HINTS 1024         /* service hint slots: a power of two >= 16 x MAX_SERVICES */
#endif
#ifndef CT_SETS
#define CT_SETS 32768          /* sets: a power of two >= CT_SIZE / CT_WAYS (render.py) */
#endif
#ifndef PERSIST_SIZE
#define PERSIST_SIZE 65521     /* persistence templates */
#endif
#ifndef MAX_TUNNEL_FRAME
#define MAX_TUNNEL_FRAME 1514  /* largest frame after IPIP encapsulation */
#endif
#ifndef HASH_SEED
#define HASH_SEED 0x4c565321u  /* same on every router: same real for the same flow */
#endif
#define PERSIST_REFRESH_NS 1000000000ull /* templates are refreshed at most once a second */

/* helpers return an XDP verdict, or this to say "keep going" */
#define FURTHER_PROCESSING -1
#define NAT_ICMP -2 /* parse_packet: ICMP, and the build has NAT: maybe an error to translate */
#define IPV6_PACKET -3 /* parse_packet: IPv6, and the build has feature ipv6 (ipv6.h) */

/* struct service.flags */
#define SVC_F_TUNNEL   (1u << 0) /* IPIP to the real server; otherwise direct routing */
#define SVC_F_PERSIST  (1u << 1) /* persistence templates by masked source address */
#define SVC_F_HASH_SRC (1u << 2) /* sh: the table is indexed by the source address */
#define SVC_F_HASH_DST (1u << 3) /* dh: the table is indexed by the destination address */
#define SVC_F_NAT      (1u << 4) /* NAT: rewrite to RIP:rport, redirect to the private side */
/* bits 5-7: the least-connection family (scheduling.h lc_pick), 0: none */
#define SVC_LC_SHIFT   5
#define SVC_LC_MASK    (7u << SVC_LC_SHIFT)
#define SVC_LC_LC      1 /* lc: fewer connections */
#define SVC_LC_WLC     2 /* wlc: fewer connections per weight */
#define SVC_LC_SED     3 /* sed: fewer (connections + 1) per weight */
#define SVC_LC_NQ      4 /* nq: an idle server, else as sed */
#define SVC_LC_LBLC    5 /* lblc, lblcr: the destination's server unless it is overloaded */

/* struct flow_state.used (conntrack) */
#define CT_USED        1 /* the way holds an entry */
#define CT_COUNTED     2 /* ... that holds one count of its real in real_conns */

/* struct real.flags */
#define REAL_F_FAILED   (1u << 0) /* taken out: its tracked flows are rescheduled */
#define REAL_F_QUIESCED (1u << 1) /* weight 0: keeps its flows, gets no new ones */

/* global_stats slots (per-CPU u64) */
#define G_PASS_NOT_IPV4     0  /* truncated Ethernet, VLAN-tagged, ARP, IPv6, ... */
#define G_PASS_BAD_IPV4     1  /* truncated or invalid IPv4 header: the stack drops it */
#define G_PASS_NOT_VIP      2  /* not for a virtual service (address, protocol or port) */
#define G_DROP_FRAGMENT     3  /* fragment of a packet to a VIP */
#define G_DROP_IP_OPTIONS   4  /* IPv4 options on a packet to a VIP */
#define G_DROP_BAD_L4       5  /* truncated TCP/UDP header, TCP data offset < 5 */
#define G_DROP_NO_REAL      6  /* the service has no real server that can take it */
#define G_DROP_TOO_BIG      7  /* would exceed MAX_TUNNEL_FRAME after encapsulation */
#define G_DROP_ENCAP        8  /* bpf_xdp_adjust_head failed */
#define G_TX                9  /* forwarded (XDP_TX) */
#define G_CT_HIT            10 /* packet of a tracked flow */
#define G_CT_MISS_NON_SYN   11 /* mid-flow TCP packet without state (restart, eviction, busy set) */
#define G_RESCHEDULED       12 /* tracked flow whose real server failed or changed */
#define G_PERSIST_HIT       13 /* new flow sent by a persistence template */
#define G_DROP_UNSUPPORTED  14 /* service asks for a feature this build left out */
#define G_NAT_IN            15 /* NAT: rewritten and redirected to the private side */
#define G_NAT_OUT           16 /* NAT: reply rewritten and redirected to the public side */
#define G_NAT_EXPIRED       17 /* NAT: packet of a flow whose entry timed out */
#define G_PASS_NAT_NO_FLOW  18 /* private side: not a reply of a tracked NAT flow */
#define G_DROP_NAT_UNSET    19 /* NAT service, but configure_nat() never ran (no devmap, MACs) */
#define G_NAT_ICMP          20 /* NAT: ICMP error about a NAT flow translated and redirected */
#define G_CT_BUSY           21 /* connection-table set held by another CPU's insert too long */
#define G_CT_EVICTED        22 /* a new entry replaced the least recently used one of a full set */
#define G_LC_SECOND         23 /* lc family: new flow sent to the second candidate (less loaded) */
#define G_PASS_BAD_IPV6     24 /* truncated IPv6 header, version != 6, payload beyond the frame */
#define G_DROP_IPV6_EXT     25 /* IPv6 extension header (not a fragment) on a packet to a VIP */
#define G_PASS_HOP_LIMIT    26 /* IPv6 NAT: hop limit <= 1, to the kernel (nat6.h) */
#define GLOBAL_COUNTERS     27

/* tx_ports slots (NAT) */
#define NAT_TX_PRIVATE 0
#define NAT_TX_PUBLIC  1
