package node

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/projections"
)

// natsConnected is the ledger's connection check (app.WithConnectionCheck):
// while the connection is down, commands are refused at once instead of
// waiting for a publish to time out. It reads a status the connection's
// status changes keep, never the connection itself: nats.go holds the
// connection's lock while a write to a server that stopped reading (a
// partition) is stuck, and nc.IsConnected would wait with it, and with it
// every request that asks.
func natsConnected(nc *nats.Conn) func() error {
	var status atomic.Int32
	changes := nc.StatusChanged() // every status
	status.Store(int32(nc.Status()))
	go func() {
		for st := range changes {
			status.Store(int32(st))
			if st == nats.CLOSED {
				return
			}
		}
	}()
	return func() error {
		if st := nats.Status(status.Load()); st != nats.CONNECTED {
			return fmt.Errorf("connection %s", strings.ToLower(st.String()))
		}
		return nil
	}
}

// healthOf is readiness, what /readyz reports: NATS connected, the stream
// answering (within 2 s), the view keeping up with it (see lagWatch) on a
// feed that delivers what it asked for (see app.Run: a consumer found
// changed, a message without its body). The stream is not asked while NATS
// is down, so the answer does not wait for it; the view's lag cannot be
// judged then, and it keeps answering reads.
//
// A view that the ledger cannot show to be within its staleness bound
// (stale, see app.WithMaxStaleness) is not ready either: the ledger answers
// 503 to every authenticated request then, and a load balancer should send
// them elsewhere.
func healthOf(nc *nats.Conn, store *eventstore.Store, view *projections.Tokens, lag *lagWatch, stale func() error) func(context.Context) []httpapi.Component {
	connected := natsConnected(nc)
	return func(ctx context.Context) []httpapi.Component {
		natsErr := connected()
		var streamErr, viewErr error
		if natsErr != nil {
			streamErr = errors.New("cannot be reached while NATS is down")
		} else {
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			last, err := store.Head(ctx) // a cut-off server's stale answer is not ready

			if err != nil {
				streamErr = err
			} else {
				viewErr = lag.check(view.Sequence(), last, time.Now())
			}
		}
		if err := stale(); err != nil && viewErr == nil {
			viewErr = errors.New("not shown within the staleness bound of the stream's head")
		}
		if fault := view.FeedFault(); fault != nil {
			viewErr = fmt.Errorf("feed fault: %w", fault)
		}
		return []httpapi.Component{{Name: "nats", Err: natsErr}, {Name: "stream", Err: streamErr}, {Name: "view", Err: viewErr}}
	}
}

// lagWatch tells a view that is briefly behind the stream (events being
// applied) from one that is stuck: it remembers the stream's last sequence when
// the view was first seen behind, and reports only if the view has not reached
// that sequence maxLag later. A view that keeps up under a steady write load
// is always a little behind, and is fine.
type lagWatch struct {
	mu     sync.Mutex
	target uint64    // stream sequence the view must reach; 0: none pending
	since  time.Time // when target was set
}

const maxLag = 5 * time.Second

func (w *lagWatch) check(viewSeq, streamSeq uint64, now time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.target != 0 && viewSeq >= w.target {
		w.target = 0
	}
	if viewSeq >= streamSeq {
		return nil
	}
	if w.target == 0 {
		w.target, w.since = streamSeq, now
		return nil
	}
	if now.Sub(w.since) > maxLag {
		return fmt.Errorf("token view stuck at sequence %d: it has not reached %d within %s (stream at %d)", viewSeq, w.target, maxLag, streamSeq)
	}
	return nil
}

// monitor keeps the latest readiness, for liveness to report without asking
// NATS anything. Readiness asks the stream, which a frozen server or a
// partition leaves unanswered for its 2 s bound, and even nc.IsConnected
// waits for the connection's lock, which nats.go holds while it writes to a
// socket that may be stuck for up to a minute. A Kubernetes liveness probe
// gives up after 1 s by default, and a ledger whose probe fails is
// restarted, which brings no NATS back: liveness must answer at once, so it
// answers from here and asks for a fresh check in the background.
type monitor struct {
	check func(context.Context) []httpapi.Component
	now   func() time.Time

	mu       sync.Mutex
	last     []httpapi.Component
	at       time.Time // when last was checked
	checking bool      // a check is under way
	since    time.Time // when it started
}

// Liveness refreshes in the background when what it has is older than
// refreshAfter; a check still running after stuckAfter (well past the
// stream's 2 s bound) is itself reported.
const (
	refreshAfter = time.Second
	stuckAfter   = 5 * time.Second
)

func newMonitor(check func(context.Context) []httpapi.Component) *monitor {
	return &monitor{check: check, now: time.Now}
}

// ready checks now, keeps the answer and returns it: /readyz.
func (m *monitor) ready(ctx context.Context) []httpapi.Component {
	c := m.check(ctx)
	m.keep(c)
	return c
}

func (m *monitor) keep(c []httpapi.Component) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.last, m.at = c, m.now()
}

// live returns the latest readiness without waiting: /healthz.
func (m *monitor) live(context.Context) []httpapi.Component {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if !m.checking && now.Sub(m.at) >= refreshAfter {
		m.checking, m.since = true, now
		go func() {
			// Not the request's context: the check outlives the answer.
			c := m.check(context.Background())
			m.mu.Lock()
			m.last, m.at, m.checking = c, m.now(), false
			m.mu.Unlock()
		}()
	}
	if m.checking && now.Sub(m.since) >= stuckAfter {
		stuck := fmt.Errorf("not known: a check of it has waited %s for NATS", now.Sub(m.since).Round(time.Second))
		out := make([]httpapi.Component, len(m.last))
		for i, c := range m.last {
			out[i] = httpapi.Component{Name: c.Name, Err: stuck}
		}
		return out
	}
	return m.last
}
