/* scheduling6.h: choosing the real server of a new IPv6 flow (feature ipv6), with
 * the IPv4 rules of scheduling.h on 128-bit addresses:
 *   - persistent services: a live template in persist6 for the source address
 *     masked to the service's prefix length (struct service.pmask holds the prefix
 *     length, 1..128, for an IPv6 service) wins; otherwise the Maglev slot of that
 *     masked address's hash;
 *   - otherwise the Maglev slot of the flow hash (rr/wrr, approximations), of the
 *     source address (sh, mh) or of the destination address (dh, lblc, lblcr);
 *   - the least-connection family takes the less loaded of that slot's real and a
 *     second hash's (lc_pick: the same real_conns, real_weights and counting rules
 *     as IPv4; an IPv6 real has a reals index like any other).
 * addr_hash6 is plan.addr_hash for an IPv6 address: Murmur3 steps over its four
 * words, so that every router (and the tests) predict the same real. */

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define LB_HTONL(x) ((__be32)__builtin_bswap32(x))
#else
#define LB_HTONL(x) ((__be32)(x))
#endif

LB_INLINE __u32 addr_hash6(const __be32 *a)
{
    __u32 h = HASH_SEED;
#pragma unroll
    for (int i = 0; i < 4; i++)
        h = hash_step(h, a[i]);
    return hash_final(h);
}

/* word i (0..3, network order) of the netmask of an IPv6 prefix of plen bits */
LB_INLINE __be32 prefix_word(__u32 plen, int i)
{
    __s32 bits = (__s32)plen - 32 * i;
    if (bits >= 32)
        return 0xffffffffu;
    if (bits <= 0)
        return 0;
    return LB_HTONL(0xffffffffu << (32 - bits));
}

/* the persistence template's key: the service and the client's masked address */
LB_INLINE void persist6_key(const struct service *svc, const struct packet6 *p,
                            struct persist_key6 *pk)
{
    pk->service = svc->index;
#pragma unroll
    for (int i = 0; i < 4; i++)
        pk->client[i] = p->flow.saddr[i] & prefix_word(svc->pmask, i);
}

LB_INLINE __u32 schedule_hash6(const struct service *svc, const struct packet6 *p, __u32 fh)
{
    if (feature_sh() && (svc->flags & SVC_F_HASH_SRC))
        return addr_hash6(p->flow.saddr);
    if (feature_dh() && (svc->flags & SVC_F_HASH_DST))
        return addr_hash6(p->flow.daddr);
    return fh;
}

/* A new (or rescheduled) IPv6 flow of svc, as schedule() for IPv4 (fh: flow_hash6).
 * Fills id and r; returns FURTHER_PROCESSING or a verdict. */
LB_INLINE int schedule6(const struct service *svc, const struct packet6 *p, __u32 *id,
                        struct real **r, __u32 fh)
{
    __u32 chosen = 0;
    struct real *cr = 0;
    if (feature_persist() && (svc->flags & SVC_F_PERSIST)) {
        struct persist_key6 pk = {};
        persist6_key(svc, p, &pk);
        struct persist_state *ps = persist6.lookup(&pk);
        __u64 now = bpf_ktime_get_ns();
        persist_take(svc, ps, now, &chosen, &cr);
        if (!chosen) {
            __u32 h = addr_hash6(pk.client);
            table_pick(svc, h, h, &chosen, &cr);
        }
        if (cr && cr->addr && !persist_recent(ps, chosen, cr->addr, now)) {
            struct persist_state fresh = {.real = chosen, .addr = cr->addr, .last_ns = now};
            persist6.update(&pk, &fresh);
        }
    } else {
        __u32 h = schedule_hash6(svc, p, fh);
        table_pick(svc, h, feature_dh() && (svc->flags & SVC_F_HASH_DST) ? fh : h, &chosen, &cr);
    }
    if (!cr || !cr->addr || (cr->flags & REAL_F_FAILED))
        return verdict(G_DROP_NO_REAL, XDP_DROP);
    *id = chosen;
    *r = cr;
    return FURTHER_PROCESSING;
}

/* a packet of a tracked IPv6 flow keeps its client's template alive (persist_touch) */
LB_INLINE void persist_touch6(const struct service *svc, const struct packet6 *p, __u32 id,
                              const struct real *r)
{
    if (!(feature_persist() && (svc->flags & SVC_F_PERSIST)))
        return;
    struct persist_key6 pk = {};
    persist6_key(svc, p, &pk);
    __u64 now = bpf_ktime_get_ns();
    if (persist_fresh(svc, persist6.lookup(&pk), id, now))
        return;
    struct persist_state fresh = {.real = id, .addr = r->addr, .last_ns = now};
    persist6.update(&pk, &fresh);
}
