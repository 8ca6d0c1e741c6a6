{#- Rendered twice by render.py: ct/ct_set/flow_key (IPv4, 4 x __u32 key words) and,
    with feature ipv6, ct6/ct6_set/flow_key6 (5 x __u64): one source, two tables. -#}
{% macro kload(src) %}{{ word }} {% for i in range(words) %}k{{ i }} = kw[{{ i }}]{{ ", " if not loop.last }}{% endfor %}{% endmacro %}
{% macro kargs() %}{% for i in range(words) %}, k{{ i }}{% endfor %}{% endmacro %}
{% macro kwargs() %}{% for i in range(words) %}, kw[{{ i }}]{% endfor %}{% endmacro %}
{% if ct == "ct" %}
/* conntrack.h: the connection table, a set-associative cache of flows in a BPF array.
 *
 * conntrack (and nat_rev, NAT's reply keys) is an array of CT_SETS sets of CT_WAYS
 * ways (struct ct_set); a flow's set is ct_hash(key) & (CT_SETS - 1), one array
 * lookup that the verifier inlines, then up to CT_WAYS key compares. A new flow takes
 * a free way of its set, else the least recently used one (by `stamp`, the set's
 * tick at the entry's last packet): LRU replacement within each set, as in a CPU
 * cache. The kernel's hash maps cost a spinlocked, non-inlined call per insert (an
 * LRU insert alone is ~280 ns here) and a non-inlined call per lookup.
 *
 * One table for all CPUs. Concurrency, so that no packet ever takes another flow's
 * real server:
 *   - writers (inserts, from any CPU) take the set's sequence lock: seq even -> odd
 *     with a compare-and-swap, write key and value, then seq + 1 (atomic: a full
 *     barrier). A writer that cannot take it after CT_WRITE_TRIES counts G_CT_BUSY and
 *     inserts nothing (the flow is scheduled again by its next packet);
 *   - readers take no lock: seq before the key compare, a copy of the value, seq
 *     again; a changed or odd seq means a write overlapped: read again, at most
 *     CT_READ_TRIES times, then a miss. A torn read is thus never a hit. (Load order
 *     as on x86-64, TSO; a weakly ordered CPU would need load-acquire of seq.)
 *   - the per-packet writes of a hit (LRU stamp, tick, NAT last-seen and closing)
 *     are plain stores outside the lock: racing with an insert into the same way they
 *     can only make the new entry look more recent or, for NAT, start closing; never
 *     change which real server a key maps to.
 * The end of an entry is visible here (eviction, G_CT_EVICTED, replacement), for the
 * least-connection schedulers: an entry inserted CT_COUNTED holds one count of its
 * real in real_conns until it is replaced or evicted (ct_insert) or the client sends
 * FIN or RST (ct_uncount), each under the set's lock: released exactly once. */

#define CT_BARRIER() asm volatile("" ::: "memory")
#define CT_SET(h) ((h) & (CT_SETS - 1))

/* The hash that picks a key's set: two independent 64-bit multiplies of the 5-tuple
 * and a fold (about 10 ns less per packet than flow_hash's murmur3 rounds, which
 * stay for Maglev, where every router must agree, and the tunnel's outer source).
 * maps.ct_hash is the same function in Python. */
LB_INLINE __u32 ct_hash(const struct flow_key *k)
{
    __u64 a = ((__u64)k->saddr << 32) | k->daddr;
    __u64 b = ((__u64)(((__u32)k->sport << 16) | k->dport) << 32) | k->proto;
    __u64 h = (a * 0x9e3779b97f4a7c15ull) ^ (b * 0xc2b2ae3d27d4eb4full);
    h ^= h >> 32;
    h *= 0x165667b19e3779f9ull;
    return h >> 32;
}
#define CT_MISS -1
#define CT_READ_TRIES 3
#define CT_WRITE_TRIES 4

{% endif %}
LB_INLINE bool {{ ct }}_key_eq(const struct {{ key }} *a{% for i in range(words) %}, {{ word }} k{{ i }}{% endfor %})
{
    const {{ word }} *w = (const {{ word }} *)a;
    return {% for i in range(words) %}{{ " && " if i }}w[{{ i }}] == k{{ i }}{% endfor %};
}

/* The way of set b holding key k (its value copied to *out), or CT_MISS. */
LB_INLINE int {{ ct }}_find(struct {{ set }} *b, const struct {{ key }} *k, struct flow_state *out)
{
    const {{ word }} *kw = (const {{ word }} *)k;
    {{ kload() }};
    for (int attempt = 0; attempt < CT_READ_TRIES; attempt++) {
        __u64 s1 = *(volatile __u64 *)&b->seq;
        CT_BARRIER();
        int way = CT_MISS;
#pragma unroll
        for (int i = 0; i < CT_WAYS; i++) {
            if ({{ ct }}_key_eq(&b->key[i]{{ kargs() }})) {
                way = i;
                break;
            }
        }
        if (way == CT_MISS)
            return CT_MISS; /* a miss needs no check: it only schedules the flow again */
        way &= CT_WAYS - 1;
        __builtin_memcpy(out, &b->val[way], sizeof(*out));
        CT_BARRIER();
        __u64 s2 = *(volatile __u64 *)&b->seq;
        if (s1 == s2 && !(s1 & 1) && out->used)
            return way;
    }
    return CT_MISS;
}

/* the set's next tick: never 0, which marks a free way */
LB_INLINE __u32 {{ ct }}_tick(const struct {{ set }} *b)
{
    __u32 t = b->tick + 1;
    return t ? t : 1;
}

/* a packet of the entry at `way`: most recently used in its set */
LB_INLINE void {{ ct }}_touch(struct {{ set }} *b, int way)
{
    __u32 t = {{ ct }}_tick(b);
    b->tick = t;
    b->stamp[way & (CT_WAYS - 1)] = t;
}

/* take set b's sequence lock (seq even -> odd); false when other CPUs held it
 * throughout CT_WRITE_TRIES attempts */
LB_INLINE bool {{ ct }}_lock(struct {{ set }} *b)
{
    for (int attempt = 0; attempt < CT_WRITE_TRIES; attempt++) {
        __u64 s = *(volatile __u64 *)&b->seq;
        if (!(s & 1) && __sync_val_compare_and_swap(&b->seq, s, s + 1) == s)
            return true;
    }
    return false;
}

/* Insert (or replace) key k with value v in set b: the way already holding k, else a
 * free way, else the least recently used. Returns the way, or CT_MISS when other
 * CPUs held the set throughout (G_CT_BUSY). */
LB_INLINE int {{ ct }}_insert(struct {{ set }} *b, const struct {{ key }} *k, const struct flow_state *v)
{
    if (!{{ ct }}_lock(b))
        return verdict(G_CT_BUSY, CT_MISS);
    CT_BARRIER();
    const {{ word }} *kw = (const {{ word }} *)k;
    {{ kload() }};
    __u32 tick = {{ ct }}_tick(b);
    int same = CT_MISS, free = CT_MISS, oldest = 0;
    __u32 oldest_age = 0;
#pragma unroll
    for (int i = 0; i < CT_WAYS; i++) {
        __u32 stamp = b->stamp[i];
        if (!stamp) {
            if (free == CT_MISS)
                free = i;
        } else if ({{ ct }}_key_eq(&b->key[i]{{ kargs() }})) {
            same = i;
        } else if (tick - stamp > oldest_age) {
            oldest_age = tick - stamp;
            oldest = i;
        }
    }
    int way = same != CT_MISS ? same : free != CT_MISS ? free : oldest;
    if (same == CT_MISS && free == CT_MISS)
        count(G_CT_EVICTED);
    way &= CT_WAYS - 1;
    /* the entry replaced (evicted, or the same key scheduled again) ends its count */
    if (feature_lc() && b->stamp[way] && b->val[way].used == CT_COUNTED)
        lc_release(b->val[way].real);
    __builtin_memcpy(&b->val[way], v, sizeof(*v));
    {{ word }} *kd = ({{ word }} *)&b->key[way];
{% for i in range(words) %}
    kd[{{ i }}] = k{{ i }};
{% endfor %}
    b->val[way].used = feature_lc() && v->used == CT_COUNTED ? CT_COUNTED : CT_USED;
    b->stamp[way] = tick;
    b->tick = tick;
    CT_BARRIER();
    __sync_fetch_and_add(&b->seq, 1);
    return way;
}

/* A FIN or RST from the client of the entry at `way` (key k) ends its count: under
 * the set's lock, only if the way still holds k and is still CT_COUNTED, so that a
 * count is released once however many CPUs see such packets. When the lock is busy
 * the count stays until the entry is replaced or evicted. */
LB_INLINE void {{ ct }}_uncount(struct {{ set }} *b, int way, const struct {{ key }} *k)
{
    if (!{{ ct }}_lock(b))
        return;
    CT_BARRIER();
    const {{ word }} *kw = (const {{ word }} *)k;
    way &= CT_WAYS - 1;
    __u32 id = 0;
    if (b->stamp[way] && b->val[way].used == CT_COUNTED &&
        {{ ct }}_key_eq(&b->key[way]{{ kwargs() }})) {
        b->val[way].used = CT_USED;
        id = b->val[way].real;
    }
    CT_BARRIER();
    __sync_fetch_and_add(&b->seq, 1);
    if (id)
        lc_release(id);
}
