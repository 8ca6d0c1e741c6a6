/* ipv6.h: the IPv6 path (feature ipv6), entered from lb_ingress when parse_packet
 * sees Ethernet type 0x86dd; the IPv4 path is not touched by it. Direct routing,
 * IP6IP6 tunnelling and NAT (nat6.h, with feature nat), with every scheduler,
 * persistence and the least-connection counts of IPv4 (scheduling6.h). Every packet
 * that is not a clean IPv6 TCP/UDP packet to a VIP:
 *   truncated header, version != 6, payload length beyond the frame -> XDP_PASS
 *                                                      (pass_bad_ipv6: the stack drops it)
 *   ICMPv6 (neighbour discovery ...), any other next header          -> XDP_PASS
 *     (with feature nat ICMPv6 -> NAT_ICMP: nat6_icmp translates errors about NAT
 *     flows and passes the rest)
 *   not to a VIP's address, protocol and port                        -> XDP_PASS
 *   to a VIP: fragment header                                        -> XDP_DROP (drop_fragment)
 *   to a VIP: any other extension header (hop-by-hop, routing,
 *     destination options, AH, mobility, HIP, shim6, experimental)   -> XDP_DROP (drop_ipv6_ext)
 *   to a VIP: truncated TCP/UDP header, TCP data offset < 5          -> XDP_DROP (drop_bad_l4)
 * We do not walk extension headers: nothing with one is ever forwarded. The hop
 * limit is not looked at (direct routing does not route: the real server is on the
 * link, as for IPv4, where the TTL is left alone too). */

LB_INLINE int odd_packet6(const struct ipv6hdr *ip6, __u32 slot)
{
    struct vip_key6 vk;
    __builtin_memcpy(vk.vip, &ip6->daddr, sizeof(vk.vip));
    if (!vips6.lookup(&vk))
        return verdict(G_PASS_NOT_VIP, XDP_PASS);
    return verdict(slot, XDP_DROP);
}

/* next header values that are IPv6 extension headers (RFC 8200 and the IANA list);
 * 44, the fragment header, is told apart by the caller */
LB_INLINE bool ipv6_ext_header(__u8 nh)
{
    return nh == 0 || nh == 43 || nh == 44 || nh == 51 || nh == 60 || nh == 135 ||
           nh == 139 || nh == 140 || nh == 253 || nh == 254;
}

LB_INLINE int parse6(void *data, void *data_end, struct packet6 *p)
{
    struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
    if ((void *)(ip6 + 1) > data_end)
        return verdict(G_PASS_BAD_IPV6, XDP_PASS);
    if (ip6->version != 6)
        return verdict(G_PASS_BAD_IPV6, XDP_PASS);
    if ((void *)(ip6 + 1) + LB_NTOHS(ip6->payload_len) > data_end)
        return verdict(G_PASS_BAD_IPV6, XDP_PASS);
    __u8 nh = ip6->nexthdr;
    if (nh != IPPROTO_TCP && nh != IPPROTO_UDP) {
        if (nh == 44)
            return odd_packet6(ip6, G_DROP_FRAGMENT);
        if (ipv6_ext_header(nh))
            return odd_packet6(ip6, G_DROP_IPV6_EXT);
        if (feature_nat() && nh == 58)
            return NAT_ICMP; /* nat6.h decides */
        return verdict(G_PASS_NOT_VIP, XDP_PASS); /* ICMPv6, ESP, no next header ... */
    }
    /* the addresses in the 64-bit words ct6_hash and ct6_find read (x86-64 loads
     * them from the packet unaligned at no cost) */
    const __u64 *a = (const __u64 *)&ip6->saddr;
    __u64 *k = (__u64 *)&p->flow;
    k[0] = a[0];
    k[1] = a[1];
    k[2] = a[2];
    k[3] = a[3];
    p->flow.proto = nh;
    p->len = data_end - data;
    if (nh == IPPROTO_TCP) {
        struct tcphdr *th = (void *)(ip6 + 1);
        if ((void *)(th + 1) > data_end || th->doff < 5)
            return odd_packet6(ip6, G_DROP_BAD_L4);
        p->flow.sport = th->source;
        p->flow.dport = th->dest;
        p->tcp_flags = ((__u8 *)th)[13];
    } else {
        struct udphdr *uh = (void *)(ip6 + 1);
        if ((void *)(uh + 1) > data_end)
            return odd_packet6(ip6, G_DROP_BAD_L4);
        p->flow.sport = uh->source;
        p->flow.dport = uh->dest;
    }
    return FURTHER_PROCESSING;
}

/* the set of a key in conntrack6: a multiply per 64-bit word and a fold (maps.ct6_hash) */
LB_INLINE __u32 ct6_hash(const struct flow_key6 *k)
{
    const __u64 *w = (const __u64 *)k;
    __u64 h = (w[0] * 0x9e3779b97f4a7c15ull) ^ (w[1] * 0xc2b2ae3d27d4eb4full) ^
              (w[2] * 0x165667b19e3779f9ull) ^ (w[3] * 0xd6e8feb86659fd93ull) ^
              (w[4] * 0xff51afd7ed558ccdull);
    h ^= h >> 32;
    h *= 0x165667b19e3779f9ull;
    return h >> 32;
}

/* Maglev's hash of an IPv6 flow: flow_hash's Murmur3 steps over the four words of
 * each address, the ports and the protocol (plan.flow_hash for IPv6 addresses) */
LB_INLINE __u32 flow_hash6(const struct flow_key6 *f)
{
    __u32 h = HASH_SEED;
#pragma unroll
    for (int i = 0; i < 4; i++)
        h = hash_step(h, f->saddr[i]);
#pragma unroll
    for (int i = 0; i < 4; i++)
        h = hash_step(h, f->daddr[i]);
    h = hash_step(h, ((__u32)f->sport << 16) | f->dport);
    return hash_final(hash_step(h, f->proto));
}

LB_INLINE bool addr6_eq(const __be32 *a, const __be32 *b)
{
    return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

/* service_hints6[svc_hint_slot6(key)] = an IPv6 service's index + 1 (0: none), as
 * service_hints for IPv4: the four words of the VIP folded into one, then IPv4's
 * multiply (maps.svc_hint_slot6 is the same function) */
LB_INLINE __u32 svc_hint_slot6(const struct service_key6 *k)
{
    __u32 fold = k->vip[0] ^ k->vip[1] ^ k->vip[2] ^ k->vip[3];
    __u64 h = ((__u64)fold * 0x9e3779b97f4a7c15ull) ^
              ((__u64)(((__u32)k->port << 8) | k->proto) * 0xc2b2ae3d27d4eb4full);
    return (h >> 32) & (SVC_HINTS - 1);
}

/* The IPv6 service under key: its hint, if service_info6 at that index holds this
 * very key (two inlined array lookups and a 20-byte compare), else the services6 hash
 * (a non-inlined call: keys whose slot another service took, packets for no service) */
LB_INLINE struct service *service_by_key6(const struct service_key6 *key)
{
    __u32 slot = svc_hint_slot6(key);
    __u32 *hint = service_hints6.lookup(&slot);
    if (hint && *hint) {
        __u32 index = *hint - 1;
        struct service_info6 *si = service_info6.lookup(&index);
        if (si && addr6_eq(si->key.vip, key->vip) && si->key.port == key->port &&
            si->key.proto == key->proto)
            return &si->svc;
    }
    return services6.lookup((struct service_key6 *)key);
}

/* the IPv6 service a packet is for: (VIP, port, protocol), then port 0 */
LB_INLINE struct service *find_service6(const struct packet6 *p)
{
    struct service_key6 key = {.port = p->flow.dport, .proto = p->flow.proto};
    __builtin_memcpy(key.vip, p->flow.daddr, sizeof(key.vip));
    struct service *svc = service_by_key6(&key);
    if (!svc && feature_any_port()) {
        key.port = 0;
        svc = service_by_key6(&key);
    }
    return svc;
}

LB_INLINE bool service_matches6(const struct service_key6 *k, const struct packet6 *p)
{
    return addr6_eq(k->vip, p->flow.daddr) && k->proto == p->flow.proto &&
           (k->port == p->flow.dport || k->port == 0);
}


/* IP6IP6 (next header 41, RFC 2473) to real id: outer source the VIP (the inner
 * destination), outer destination reals6[id], traffic class copied, flow label the
 * flow hash's low 20 bits (so that the real server's NIC spreads flows over its
 * queues, as IPv4's varied outer source does), hop limit 64; Ethernet towards the
 * next hop. A frame that would exceed MAX_TUNNEL_FRAME is dropped (drop_too_big). */
LB_INLINE int forward_tunnel6(struct xdp_md *ctx, __u32 id, const struct real *r, __u32 hash)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    if (data_end - data + sizeof(struct ipv6hdr) > MAX_TUNNEL_FRAME)
        return verdict(G_DROP_TOO_BIG, XDP_DROP);
    struct real6 *r6 = reals6.lookup(&id);
    if (!r6)
        return verdict(G_DROP_ENCAP, XDP_DROP);
    struct ethhdr *old = data;
    if ((void *)(old + 1) > data_end)
        return verdict(G_DROP_ENCAP, XDP_DROP);
    __u8 our_mac[ETH_ALEN];
    __builtin_memcpy(our_mac, old->h_dest, ETH_ALEN);

    if (bpf_xdp_adjust_head(ctx, 0 - (int)sizeof(struct ipv6hdr)))
        return verdict(G_DROP_ENCAP, XDP_DROP);
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct ipv6hdr *outer = (void *)(eth + 1);
    struct ipv6hdr *inner = (void *)(outer + 1);
    if ((void *)(inner + 1) > data_end)
        return verdict(G_DROP_ENCAP, XDP_DROP);

    __builtin_memcpy(eth->h_dest, r->mac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, our_mac, ETH_ALEN);
    eth->h_proto = LB_HTONS(ETH_P_IPV6);
    __u32 tclass = ((__u32)inner->priority << 4) | (inner->flow_lbl[0] >> 4);
    *(__be32 *)outer = __builtin_bswap32((6u << 28) | (tclass << 20) | (hash & 0xfffff));
    outer->payload_len = LB_HTONS(LB_NTOHS(inner->payload_len) + sizeof(struct ipv6hdr));
    outer->nexthdr = 41;
    outer->hop_limit = 64;
    __builtin_memcpy(&outer->saddr, &inner->daddr, sizeof(outer->saddr));
    __builtin_memcpy(&outer->daddr, r6->addr, sizeof(outer->daddr));
    return XDP_TX;
}

LB_INLINE int forward6(struct xdp_md *ctx, const struct service *svc, __u32 id,
                       const struct real *r, __u32 hash)
{
    int v;
    if (svc->flags & SVC_F_TUNNEL)
        v = forward_tunnel6(ctx, id, r, hash);
    else
        v = forward_direct((void *)(long)ctx->data, (void *)(long)ctx->data_end, r);
    if (v == XDP_TX)
        count(G_TX);
    return v;
}

LB_INLINE int lb_ingress6(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct packet6 p = {};
    int v = parse6(data, data_end, &p);
    if (feature_nat() && v == NAT_ICMP)
        return nat6_icmp(ctx, true);
    if (v != FURTHER_PROCESSING)
        return v;
    struct packet acc = {.len = p.len}; /* account() reads the length only */

    __u32 set_index = CT_SET(ct6_hash(&p.flow));
    struct ct6_set *set = conntrack6.lookup(&set_index);
    if (!set)
        return XDP_ABORTED;

    /* 1. a tracked flow keeps its real server (a SYN always starts a new flow) */
    struct service *svc = 0;
    bool tcp = p.flow.proto == IPPROTO_TCP;
    bool ct_missed = false;
    if (!(tcp && (p.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)) {
        struct flow_state st;
        int way = ct6_find(set, &p.flow, &st);
        if (way != CT_MISS) {
            __u32 sid = st.service;
            struct service_info6 *si = service_info6.lookup(&sid);
            if (si && service_matches6(&si->key, &p)) {
                svc = &si->svc;
                __u32 cid = st.real;
                struct real *cr = reals.lookup(&cid);
                bool alive = true;
                struct nat_config *cfg = 0;
                __u64 now = 0;
                if (feature_nat() && (svc->flags & SVC_F_NAT)) { /* nat6.h */
                    __u32 zero = 0;
                    cfg = nat_config.lookup(&zero);
                    if (cfg)
                        now = nat_now(cfg);
                    alive = cfg && cfg->tcp_ns && !nat_expired(&st, p.flow.proto, cfg, now);
                    if (!alive)
                        count(G_NAT_EXPIRED);
                }
                if (alive && real_usable(cr, st.addr)) {
                    count(G_CT_HIT);
                    ct6_touch(set, way);
                    if (feature_lc() && st.used == CT_COUNTED && tcp &&
                        (p.tcp_flags & (TCP_FIN | TCP_RST)))
                        ct6_uncount(set, way, &p.flow); /* the flow ends: its count too */
                    persist_touch6(svc, &p, cid, cr);
                    account(svc->index, cid, &acc, false);
                    if (feature_nat() && cfg)
                        return forward_nat6(ctx, cid, cr, &p, &set->val[way & (CT_WAYS - 1)],
                                            cfg, now);
                    return forward6(ctx, svc, cid, cr, st.hash);
                }
                if (alive)
                    count(G_RESCHEDULED);
            }
        } else if (tcp) {
            ct_missed = true;
        }
    }

    /* 2. otherwise the service and its Maglev table decide */
    if (!svc) {
        svc = find_service6(&p);
        if (!svc)
            return verdict(G_PASS_NOT_VIP, XDP_PASS);
        if (ct_missed)
            count(G_CT_MISS_NON_SYN);
    }
    if ((svc->flags & SVC_F_NAT)      ? !feature_nat()
        : (svc->flags & SVC_F_TUNNEL) ? !feature_tunnel()
                                      : !feature_direct())
        return verdict(G_DROP_UNSUPPORTED, XDP_DROP);
    __u32 id = 0, fh = flow_hash6(&p.flow);
    struct real *r = 0;
    v = schedule6(svc, &p, &id, &r, fh); /* scheduling6.h */
    if (v != FURTHER_PROCESSING)
        return v;
    account(svc->index, id, &acc, true);
    if (feature_nat() && (svc->flags & SVC_F_NAT))
        return nat6_new_flow(ctx, set, svc, id, r, &p, fh);
    if (!(tcp && (p.tcp_flags & TCP_RST))) {
        struct flow_state fresh = {.real = id, .addr = r->addr, .service = svc->index, .hash = fh};
        bool counted = lc_kind(svc) != 0;
        if (counted) { /* counted before it can be evicted, undone if not inserted */
            fresh.used = CT_COUNTED;
            lc_count(id);
        }
        /* G_CT_BUSY: the next packet schedules it again */
        if (ct6_insert(set, &p.flow, &fresh) == CT_MISS && counted)
            lc_release(id);
    }
    return forward6(ctx, svc, id, r, fh);
}
