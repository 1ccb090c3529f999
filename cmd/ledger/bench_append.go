package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"runtime"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/httpapi"
)

// The command mix: each token lives through a create, then rotate, update,
// rotate, update; each worker starts the next token when one is done. Every
// command is one event, and no two workers touch one token, so nothing
// conflicts on either side.
const lifeLength = 5

// lifeName is the name a token gets at a step of its life: a new one at each
// update (an update to the same name writes nothing), and as long on the
// ledger's side as on the baseline's.
func lifeName(w, life, step int) string { return fmt.Sprintf("bench %04d %08d %d", w, life, step) }

// commands is one way to send the ledger its commands: the Go API or HTTP.
type commands interface {
	create(ctx context.Context, name string) (id string, err error)
	rotate(ctx context.Context, id string) error
	update(ctx context.Context, id, name string) error
}

// lives runs the command mix on c workers through cmds.
type lives struct {
	cmds    commands
	workers []lifeState
}

type lifeState struct {
	id         string
	step, life int
}

func newLives(cmds commands, c int) *lives { return &lives{cmds: cmds, workers: make([]lifeState, c)} }

func (l *lives) op(ctx context.Context, w int) error {
	s := &l.workers[w]
	var err error
	switch s.step {
	case 0:
		s.id, err = l.cmds.create(ctx, lifeName(w, s.life, s.step))
	case 1, 3:
		err = l.cmds.rotate(ctx, s.id)
	default:
		err = l.cmds.update(ctx, s.id, lifeName(w, s.life, s.step))
	}
	if err != nil {
		return err
	}
	if s.step++; s.step == lifeLength {
		s.step, s.life = 0, s.life+1
	}
	return nil
}

// goAPI sends commands through app.Ledger, as the owner.
type goAPI struct{ r *benchRig }

func (g goAPI) create(ctx context.Context, name string) (string, error) {
	res, err := g.r.ledger.CreateToken(ctx, g.r.owner, domain.CreateToken{Scope: "organization", Name: name, Role: string(domain.RoleOrganizationMember)}, "")
	if err != nil {
		return "", err
	}
	return res.Token.ID(), nil
}

func (g goAPI) rotate(ctx context.Context, id string) error {
	_, err := g.r.ledger.RotateToken(ctx, g.r.owner, id, "")
	return err
}

func (g goAPI) update(ctx context.Context, id, name string) error {
	_, err := g.r.ledger.UpdateToken(ctx, g.r.owner, id, domain.UpdateToken{Name: &name}, "")
	return err
}

// httpAPI sends commands through the HTTP API with the Go client, as the
// owner.
type httpAPI struct{ c *httpapi.Client }

func (h httpAPI) create(ctx context.Context, name string) (string, error) {
	t, err := h.c.CreateToken(ctx, httpapi.CreateRequest{Scope: "organization", Name: name, Role: string(domain.RoleOrganizationMember)}, "")
	return t.ID, err
}

func (h httpAPI) rotate(ctx context.Context, id string) error {
	_, err := h.c.RotateToken(ctx, id)
	return err
}

func (h httpAPI) update(ctx context.Context, id, name string) error {
	_, err := h.c.UpdateToken(ctx, id, httpapi.UpdateRequest{Name: &name})
	return err
}

// benchClient is a client of the rig's API whose transport keeps a
// connection open for each of up to conns concurrent callers, as that many
// separate clients would (net/http keeps only two by default, and would
// open and close the rest on every request).
func (r *benchRig) benchClient(conns int) (*httpapi.Client, *http.Transport) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = conns
	c := httpapi.NewClient(r.apiURL, r.ownerSecret)
	c.HTTP = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	c.UserAgent = "ledger-bench"
	return c, tr
}

// rawAppender writes what the commands would, straight to JetStream: the
// same events (made by the domain, as the ledger makes them, with the same
// actor), as the same messages (eventstore's Store.Message: body, CloudEvents
// headers), published synchronously with the same options as the ledger's
// append (msg id, expected stream, the token's expected last sequence), to
// the baseline stream. The events are made before a round starts: the
// baseline is JetStream alone.
type rawAppender struct {
	r          *benchRig
	rotateOnly bool // after the create, only rotations, one token for good (notify)
	workers    []rawWorker
}

type rawWorker struct {
	tok        *domain.Token
	step, life int
	last       uint64 // stream sequence of the token's last message
	queue      []rawMsg
}

type rawMsg struct {
	msg    *nats.Msg
	id     string
	filter string // the token's subjects, as eventstore's Append expects on
	first  bool   // the token's first event: nothing stored before it
}

func (r *benchRig) newRawAppender(c int) *rawAppender {
	return &rawAppender{r: r, workers: make([]rawWorker, c)}
}

// prepare makes each worker's share of the next n messages.
func (a *rawAppender) prepare(n int) error {
	env := func() domain.Env {
		o := a.r.owner
		return domain.Env{Now: time.Now(), Rand: rand.Reader,
			Actor: domain.Actor{TokenID: o.Token.ID(), RequestID: o.RequestID, SourceIP: o.SourceIP, UserAgent: o.UserAgent}}
	}
	for w := range a.workers {
		s := &a.workers[w]
		s.queue = s.queue[:0]
		for range share(n, len(a.workers), w) {
			var (
				e   domain.Event
				err error
			)
			switch {
			case s.step == 0:
				s.tok, e, _, err = domain.Create(domain.CreateToken{OrganizationID: benchOrg, Scope: "organization",
					Name: lifeName(w, s.life, 0), Role: string(domain.RoleOrganizationMember)}, env())
			case a.rotateOnly || s.step%2 == 1:
				e, _, err = s.tok.Rotate(env())
			default:
				name := lifeName(w, s.life, s.step)
				e, _, err = s.tok.Update(domain.UpdateToken{Name: &name}, env())
			}
			if err != nil {
				return err
			}
			msg, err := a.r.baseline.Message(e)
			if err != nil {
				return err
			}
			s.queue = append(s.queue, rawMsg{msg: msg, id: e.ID, first: s.step == 0,
				filter: baselinePrefix + "." + e.OrganizationID + "." + e.TokenID + ".*"})
			if s.step++; !a.rotateOnly && s.step == lifeLength {
				s.step, s.life = 0, s.life+1
			}
		}
	}
	return nil
}

// publish sends worker w's next message and returns its stream sequence.
func (a *rawAppender) publish(ctx context.Context, w int) (uint64, error) {
	s := &a.workers[w]
	if len(s.queue) == 0 {
		return 0, fmt.Errorf("raw worker %d: no message prepared", w)
	}
	m := s.queue[0]
	s.queue = s.queue[1:]
	if m.first {
		s.last = 0
	}
	ack, err := a.r.js.PublishMsg(ctx, m.msg, jetstream.WithMsgID(m.id), jetstream.WithExpectStream(baselineStream),
		jetstream.WithExpectLastSequenceForSubject(s.last, m.filter))
	if err != nil {
		return 0, fmt.Errorf("raw publish: %w", err)
	}
	if ack.Duplicate {
		return 0, fmt.Errorf("raw publish: %w: message %s stored twice", errBench, m.id)
	}
	s.last = ack.Sequence
	return ack.Sequence, nil
}

func (a *rawAppender) op(ctx context.Context, w int) error {
	_, err := a.publish(ctx, w)
	return err
}

// compareAppends measures the command mix through cmds against the raw
// publishes, both at concurrency c: a warm-up of each (which also sizes the
// baseline's rounds to last about a round), then rounds alternating.
func (r *benchRig) compareAppends(ctx context.Context, p benchParams, c int, cmds commands) (ledger, raw phases, err error) {
	l := newLives(cmds, c)
	a := r.newRawAppender(c)
	warm, err := drive(ctx, c, 0, p.round/3, l.op)
	if err != nil {
		return nil, nil, err
	}
	warmRaw := max(warm.ops, 8*c)
	if err := a.prepare(warmRaw); err != nil {
		return nil, nil, err
	}
	rawWarm, err := drive(ctx, c, warmRaw, 0, a.op)
	if err != nil {
		return nil, nil, err
	}
	rawN := max(c, int(rawWarm.rate()*p.round.Seconds()))
	for range rounds {
		runtime.GC()
		ph, err := drive(ctx, c, 0, p.round, l.op)
		if err != nil {
			return nil, nil, err
		}
		ledger = append(ledger, ph)
		if err := a.prepare(rawN); err != nil {
			return nil, nil, err
		}
		runtime.GC()
		if ph, err = drive(ctx, c, rawN, 0, a.op); err != nil {
			return nil, nil, err
		}
		raw = append(raw, ph)
	}
	return ledger, raw, nil
}

// benchAppend: the command mix through the Go API, one at a time and
// --concurrency at a time, against raw publishes at the same concurrency.
func (r *benchRig) benchAppend(ctx context.Context, p benchParams) ([]benchRow, error) {
	concs := []int{1}
	if p.concurrency != 1 {
		concs = append(concs, p.concurrency)
	}
	var rows []benchRow
	for _, c := range concs {
		ledger, raw, err := r.compareAppends(ctx, p, c, goAPI{r})
		if err != nil {
			return nil, fmt.Errorf("concurrency %d: %w", c, err)
		}
		var t *benchTarget
		if c == p.concurrency {
			t = ptr(ratioAtLeast(0.6))
		}
		rows = append(rows, row("append", fmt.Sprintf("Go API, %d at a time", c), "commands/s", ledger.rate(), raw.rate(), t))
	}
	return rows, nil
}

// httpClients is how many clients the HTTP workloads run at once.
const httpClients = 32

// benchHTTP: the command mix through the HTTP API from 32 clients at once,
// against raw publishes at concurrency 32. The API's failed-authentication
// limit is on, as in `ledger serve`; these requests all authenticate, and
// never reach it.
func (r *benchRig) benchHTTP(ctx context.Context, p benchParams) ([]benchRow, error) {
	client, tr := r.benchClient(httpClients)
	defer tr.CloseIdleConnections()
	ledger, raw, err := r.compareAppends(ctx, p, httpClients, httpAPI{client})
	if err != nil {
		return nil, err
	}
	m := fmt.Sprintf("%d clients", httpClients)
	return []benchRow{
		row("http", "commands, "+m, "req/s", ledger.rate(), raw.rate(), nil),
		row("http", "p50 latency, "+m, "ms", ledger.ms(0.5), raw.ms(0.5), nil),
		row("http", "p99 latency, "+m, "ms", ledger.ms(0.99), raw.ms(0.99), nil),
	}, nil
}
