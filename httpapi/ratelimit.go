package httpapi

import (
	"encoding/binary"
	"hash/maphash"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of the failed-authentication limit: a source may fail 20 times in
// a row, then once every 3 seconds (1,200 guesses an hour, against 256-bit
// secrets), and at most 65,536 sources are tracked at once.
const (
	DefaultFailureBurst    = 20
	DefaultFailureInterval = 3 * time.Second
	DefaultFailureSources  = 1 << 16
)

const limiterShards = 64

// failureLimiter is a token bucket per source address, charged by failed
// authentications only. Each bucket is one number, its theoretical arrival
// time (GCRA): the moment the bucket is full again. A failure moves it one
// interval later; a source is refused while it lies more than burst-1
// intervals ahead of now. A bucket whose time has passed is full, so it says
// nothing a missing entry would not: that is what "idle" means, and idle
// entries are the ones swept.
type failureLimiter struct {
	burst    int64 // failures allowed back to back
	interval int64 // nanoseconds to earn one failure back
	perShard int
	seed     maphash.Seed
	// tracked counts entries across shards: while it is zero (nobody has
	// failed lately) the success path reads one atomic and nothing else.
	tracked atomic.Int64
	// lastSweep is when idle entries were last dropped from every shard.
	lastSweep atomic.Int64
	shards    [limiterShards]limiterShard
}

type limiterShard struct {
	mu   sync.RWMutex
	full map[netip.Addr]int64 // source -> unix nanoseconds when its bucket is full again
	_    [40]byte             // keeps neighbouring shards' locks off one cache line
}

// newFailureLimiter returns nil (no limit) when burst or interval is not
// positive.
func newFailureLimiter(burst int, interval time.Duration, maxSources int) *failureLimiter {
	if burst <= 0 || interval <= 0 {
		return nil
	}
	if maxSources < limiterShards {
		maxSources = limiterShards
	}
	l := &failureLimiter{burst: int64(burst), interval: int64(interval), perShard: maxSources / limiterShards, seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].full = make(map[netip.Addr]int64)
	}
	return l
}

// sourceKey is the address a budget belongs to: an IPv4 address, or the /64
// of an IPv6 one (one host commonly holds a whole /64, so counting addresses
// would hand it 2^64 budgets). An unparsable address gets the zero key: all
// such callers share one budget.
func sourceKey(ip string) netip.Addr {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return netip.Addr{}
	}
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.WithZone("").Prefix(64)
		return p.Addr()
	}
	return a
}

func (l *failureLimiter) shard(key netip.Addr) *limiterShard {
	b := key.As16()
	// Seeded, so nobody can choose addresses that all land in one shard.
	h := maphash.Comparable(l.seed, [2]uint64{binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:])})
	return &l.shards[h%limiterShards]
}

// blocked says how long key must wait before its next attempt is evaluated;
// zero when it may go ahead. It only reads: the success path calls it.
func (l *failureLimiter) blocked(key netip.Addr, now time.Time) time.Duration {
	if l == nil || l.tracked.Load() == 0 {
		return 0
	}
	sh := l.shard(key)
	sh.mu.RLock()
	full, ok := sh.full[key]
	sh.mu.RUnlock()
	if !ok {
		return 0
	}
	if over := full - now.UnixNano() - (l.burst-1)*l.interval; over > 0 {
		return time.Duration(over)
	}
	return 0
}

// fail charges key one failure and reports whether that used up its budget
// (so the next attempt is refused).
func (l *failureLimiter) fail(key netip.Addr, now time.Time) (exhausted bool) {
	if l == nil {
		return false
	}
	t := now.UnixNano()
	l.maybeSweep(t)
	sh := l.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	full, ok := sh.full[key]
	if !ok {
		l.makeRoom(sh, t)
	}
	// Every failure costs an interval, uncapped: failures that raced past
	// blocked together pay for each of them, or a burst of parallel guesses
	// would cost one interval.
	full = max(full, t) + l.interval
	sh.full[key] = full
	return full-t > (l.burst-1)*l.interval
}

// merge takes in that key's bucket is full again at full (unix
// nanoseconds), as another instance of the ledger has charged it (see
// sharedFailures): the later of the two times wins, so a failure counted
// anywhere counts here, and nothing counted here is forgotten.
func (l *failureLimiter) merge(key netip.Addr, full int64, now time.Time) {
	if l == nil {
		return
	}
	t := now.UnixNano()
	if full <= t {
		return // full again already: nothing a missing entry would not say
	}
	l.maybeSweep(t)
	sh := l.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	old, ok := sh.full[key]
	if !ok {
		l.makeRoom(sh, t)
	}
	sh.full[key] = max(old, full)
}

// maybeSweep clears idle sources out of every shard, at most once a
// burst's worth of time: memory then follows recent failures, not all the
// sources ever seen, without a goroutine to start and stop.
func (l *failureLimiter) maybeSweep(t int64) {
	if last := l.lastSweep.Load(); t-last >= l.burst*l.interval && l.lastSweep.CompareAndSwap(last, t) {
		for i := range l.shards {
			sh := &l.shards[i]
			sh.mu.Lock()
			l.sweep(sh, t)
			sh.mu.Unlock()
		}
	}
}

// makeRoom counts a new entry about to go into sh, first making room for it
// if sh is full. Under sh.mu.
func (l *failureLimiter) makeRoom(sh *limiterShard, t int64) {
	if len(sh.full) >= l.perShard {
		l.sweep(sh, t)
	}
	if len(sh.full) >= l.perShard {
		l.evictNearestFull(sh)
	}
	l.tracked.Add(1)
}

// sweep forgets the sources whose bucket is full again.
func (l *failureLimiter) sweep(sh *limiterShard, t int64) {
	n := 0
	for k, full := range sh.full {
		if full <= t {
			delete(sh.full, k)
			n++
		}
	}
	l.tracked.Add(int64(-n))
}

// evictNearestFull makes room when every tracked source is still paying off
// failures: the one closest to being forgiven goes. An attacker holding more
// addresses than the table can track can wash its own penalties out this
// way; it cannot make any source wait longer.
func (l *failureLimiter) evictNearestFull(sh *limiterShard) {
	var (
		victim netip.Addr
		first  int64
		found  bool
	)
	for k, full := range sh.full {
		if !found || full < first {
			victim, first, found = k, full, true
		}
	}
	if found {
		delete(sh.full, victim)
		l.tracked.Add(-1)
	}
}

// sources is how many source addresses are being tracked (for /metrics).
func (l *failureLimiter) sources() int64 {
	if l == nil {
		return 0
	}
	return l.tracked.Load()
}

// clientAddr is the address a request came from: its peer, or, when the peer
// is a trusted proxy, the nearest address in X-Forwarded-For that is not
// itself a trusted proxy. Entries left of that one are whatever the client
// chose to send, so they are never read.
func clientAddr(r *http.Request, trusted []netip.Prefix) string {
	host := peerIP(r)
	if len(trusted) == 0 {
		return host
	}
	peer, err := netip.ParseAddr(host)
	if err != nil || !trustedAddr(peer.Unmap(), trusted) {
		return host
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			// Not an address: the proxy nearest it is the last source we
			// can vouch for.
			return host
		}
		a = a.Unmap()
		if !trustedAddr(a, trusted) {
			return a.String()
		}
		host = a.String()
	}
	return host
}

func trustedAddr(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ParseTrustedProxies reads a comma-separated list of CIDRs or addresses.
func ParseTrustedProxies(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !strings.Contains(f, "/") {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, err
			}
			a = a.Unmap()
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, err
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
