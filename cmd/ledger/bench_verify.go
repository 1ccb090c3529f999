package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/httpapi"
	"github.com/tokenledger/tokenledger/projections"
	"github.com/tokenledger/tokenledger/subscriber"
)

// spin calls f with 0, 1, 2, ... on this goroutine for about d and returns
// calls per second. The clock is read every 1024 calls, so reading it costs
// nothing next to what is measured.
func spin(d time.Duration, f func(i int) bool) (float64, error) {
	start := time.Now()
	for n := 0; ; {
		for range 1024 {
			if !f(n) {
				return 0, fmt.Errorf("%w: call %d", errBench, n)
			}
			n++
		}
		if el := time.Since(start); el >= d {
			return float64(n) / el.Seconds(), nil
		}
	}
}

// benchVerify: verification in process (projections.Tokens.Verify, one
// goroutine, over a view of one token per five --events, at least 1,000 and
// at most 200,000 as in projections' BenchmarkVerify), against what any
// verifier must do at least: SHA-256 the secret and look the hash up in a
// Go map. Then POST /v1/verify from 32 clients against a bare net/http
// handler that decodes the same request and sends a fixed answer of the
// same shape.
func (r *benchRig) benchVerify(ctx context.Context, p benchParams) ([]benchRow, error) {
	inProcess, floor, err := r.verifyInProcess(p)
	if err != nil {
		return nil, err
	}
	ledger, bare, err := r.verifyHTTP(ctx, p)
	if err != nil {
		return nil, err
	}
	m := fmt.Sprintf("HTTP, %d clients", httpClients)
	return []benchRow{
		row("verify", "in-process, 1 goroutine", "lookups/s", inProcess, floor, ptr(valueAtLeast(1_000_000, ">= 1,000,000/s"))),
		row("verify", m, "req/s", ledger.rate(), bare.rate(), nil),
		row("verify", "p50 latency, "+m, "ms", ledger.ms(0.5), bare.ms(0.5), nil),
		row("verify", "p99 latency, "+m, "ms", ledger.ms(0.99), bare.ms(0.99), ptr(valueBelow(5, "< 5 ms"))),
	}, nil
}

func (r *benchRig) verifyInProcess(p benchParams) (ledger, floor float64, err error) {
	n := min(max(p.events/5, 1000), 200_000)
	now := time.Now()
	view := projections.NewTokens()
	secrets := make([]string, n)
	hashes := make(map[[32]byte]int32, n)
	for i := range n {
		_, e, s, err := domain.Create(domain.CreateToken{OrganizationID: benchOrg, Scope: "workspace", WorkspaceID: fmt.Sprintf("w%d", i%100), Name: "t"},
			domain.Env{Now: now, Rand: rand.Reader})
		if err != nil {
			return 0, 0, err
		}
		if err := view.Apply(uint64(i+1), e); err != nil {
			return 0, 0, err
		}
		secrets[i] = s.Reveal()
		hashes[sha256.Sum256([]byte(secrets[i]))] = int32(i)
	}
	viaView := func(i int) bool { return view.Verify(secrets[i%n], now).Outcome == projections.OutcomeActive }
	viaMap := func(i int) bool {
		_, ok := hashes[sha256.Sum256([]byte(secrets[i%n]))]
		return ok
	}
	// Rounds of half the usual length: each does millions of lookups.
	d := p.round / 2
	if _, err := spin(d/3, viaView); err != nil {
		return 0, 0, err
	}
	if _, err := spin(d/3, viaMap); err != nil {
		return 0, 0, err
	}
	var views, maps []float64
	for range rounds {
		runtime.GC()
		v, err := spin(d, viaView)
		if err != nil {
			return 0, 0, err
		}
		runtime.GC()
		m, err := spin(d, viaMap)
		if err != nil {
			return 0, 0, err
		}
		views, maps = append(views, v), append(maps, m)
	}
	return median(views), median(maps), nil
}

func (r *benchRig) verifyHTTP(ctx context.Context, p benchParams) (ledger, bare phases, err error) {
	// Tokens made through the ledger, so its view knows them.
	n := min(max(p.events/20, 100), 1000)
	secrets := make([]string, n)
	var mu sync.Mutex
	made := 0
	if _, err := drive(ctx, 16, n, 0, func(ctx context.Context, _ int) error {
		res, err := r.ledger.CreateToken(ctx, r.owner, domain.CreateToken{Scope: "workspace", WorkspaceID: "verify", Name: "verify", Role: string(domain.RoleWorkspaceMember)}, "")
		if err != nil {
			return err
		}
		mu.Lock()
		secrets[made] = res.Secret.Reveal()
		made++
		mu.Unlock()
		return nil
	}); err != nil {
		return nil, nil, err
	}

	client, tr := r.benchClient(httpClients)
	defer tr.CloseIdleConnections()
	answer, err := client.Verify(ctx, secrets[0])
	if err != nil {
		return nil, nil, err
	}
	bareURL, stop, err := startBareVerify(answer)
	if err != nil {
		return nil, nil, err
	}
	defer stop()
	bareClient, bareTr := r.benchClient(httpClients)
	defer bareTr.CloseIdleConnections()
	bareClient.BaseURL = bareURL

	next := make([]int, httpClients)
	verifyWith := func(c *httpapi.Client) func(ctx context.Context, w int) error {
		return func(ctx context.Context, w int) error {
			i := (w + next[w]*httpClients) % n
			next[w]++
			v, err := c.Verify(ctx, secrets[i])
			if err == nil && !v.Valid {
				err = fmt.Errorf("%w: an active token's secret verified as %s", errBench, v.Status)
			}
			return err
		}
	}
	viaLedger, viaBare := verifyWith(client), verifyWith(bareClient)
	for _, op := range []func(context.Context, int) error{viaLedger, viaBare} {
		if _, err := drive(ctx, httpClients, 0, p.round/3, op); err != nil {
			return nil, nil, err
		}
	}
	for range rounds {
		runtime.GC()
		ph, err := drive(ctx, httpClients, 0, p.round, viaLedger)
		if err != nil {
			return nil, nil, err
		}
		ledger = append(ledger, ph)
		runtime.GC()
		if ph, err = drive(ctx, httpClients, 0, p.round, viaBare); err != nil {
			return nil, nil, fmt.Errorf("bare HTTP: %w", err)
		}
		bare = append(bare, ph)
	}
	return ledger, bare, nil
}

// startBareVerify serves POST /v1/verify on a loopback port with the least
// a JSON API does: it decodes the request body and encodes an answer (the
// ledger's own answer for one token, always the same). It is the floor of
// net/http and encoding/json on this machine.
func startBareVerify(answer httpapi.Verification) (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/verify", func(w http.ResponseWriter, req *http.Request) {
		var body httpapi.VerifyRequest
		if req.Header.Get("Authorization") == "" || json.NewDecoder(http.MaxBytesReader(w, req.Body, httpapi.MaxBodyBytes)).Decode(&body) != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(answer)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() { _ = srv.Close() }, nil
}

// stamp is when an event reached a handler.
type stamp struct {
	seq uint64
	at  time.Time
}

// awaitStamp waits for the stamp of stream sequence seq, passing over any
// earlier ones (a previous round's, delivered late).
func awaitStamp(ctx context.Context, ch <-chan stamp, seq uint64) (time.Time, error) {
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case s := <-ch:
			if s.seq == seq {
				return s.at, nil
			}
		case <-timeout.C:
			return time.Time{}, fmt.Errorf("the event at sequence %d did not arrive within 30 s", seq)
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}

// benchNotify: from just before a rotation is asked of the ledger to the
// moment a service's handler has the TokenRotated event. The service runs
// the subscriber package with a durable consumer, logged in to NATS with a
// token of its own (an ORGANIZATION_MEMBER) over a loopback socket, as a
// service of `ledger serve` does; it reads the services' mirror of the
// stream, in the SERVICES account.
//
// The baseline: from just before a raw publish (as in append) to the moment
// a plain JetStream durable consumer of the baseline stream, filtered the
// same way, has the message in its callback. Services can no longer read
// the baseline stream (only the services' mirror of the ledger's), so the
// baseline consumer is the ledger's own, on its in-process connection, and
// reads the stream itself: the ratio now includes the mirror's hop (the
// event copied from LEDGER into the SERVICES account's stream before a
// service can have it) and the service's socket.
func (r *benchRig) benchNotify(ctx context.Context, p benchParams) ([]benchRow, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	member, err := r.ledger.CreateToken(ctx, r.owner, domain.CreateToken{Scope: "organization", Name: "bench-notify", Role: string(domain.RoleOrganizationMember)}, "")
	if err != nil {
		return nil, fmt.Errorf("the service's token: %w", err)
	}
	got := make(chan stamp, 64)
	sub, err := subscriber.New(subscriber.Config{URL: r.natsURL, Token: member.Secret.Reveal(), Durable: "bench-notify", OrganizationID: benchOrg})
	if err != nil {
		return nil, err
	}
	subscriber.On(sub, func(ctx context.Context, e subscriber.Event, _ domain.RotatedData) error {
		select {
		case got <- stamp{e.Sequence, time.Now()}:
		case <-ctx.Done():
		}
		return nil
	})
	subDone := make(chan error, 1)
	go func() { subDone <- sub.Run(ctx) }()
	defer func() { cancel(); <-subDone }()
	select {
	case <-sub.Running():
	case err := <-subDone:
		return nil, fmt.Errorf("subscriber: %w", err)
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("subscriber not running after 30 s")
	}

	rawGot := make(chan stamp, 64)
	cons, err := r.js.CreateConsumer(ctx, baselineStream, jetstream.ConsumerConfig{
		Durable: "bench-notify-raw", AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverNewPolicy,
		FilterSubject: baselinePrefix + "." + benchOrg + ".*." + string(domain.TokenRotated),
	})
	if err != nil {
		return nil, fmt.Errorf("raw consumer: %w", err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		at := time.Now()
		meta, err := m.Metadata()
		_ = m.Ack()
		if err == nil {
			select {
			case rawGot <- stamp{meta.Sequence.Stream, at}:
			case <-ctx.Done():
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("raw consumer: %w", err)
	}
	defer cc.Stop()

	id, err := goAPI{r}.create(ctx, "notify")
	if err != nil {
		return nil, err
	}
	viaLedger := func(ctx context.Context) (time.Duration, error) {
		start := time.Now()
		res, err := r.ledger.RotateToken(ctx, r.owner, id, "")
		if err != nil {
			return 0, err
		}
		at, err := awaitStamp(ctx, got, res.Sequence)
		return at.Sub(start), err
	}
	raw := r.newRawAppender(1)
	raw.rotateOnly = true
	if err := raw.prepare(1); err != nil { // the token's create, not measured
		return nil, err
	}
	if _, err := raw.publish(ctx, 0); err != nil {
		return nil, err
	}
	viaRaw := func(ctx context.Context) (time.Duration, error) {
		start := time.Now()
		seq, err := raw.publish(ctx, 0)
		if err != nil {
			return 0, err
		}
		at, err := awaitStamp(ctx, rawGot, seq)
		return at.Sub(start), err
	}

	warm, err := oneByOne(ctx, 0, p.round/3, viaLedger)
	if err != nil {
		return nil, err
	}
	if err := raw.prepare(warm.ops); err != nil {
		return nil, err
	}
	rawWarm, err := oneByOne(ctx, warm.ops, 0, viaRaw)
	if err != nil {
		return nil, err
	}
	rawN := max(10, int(rawWarm.rate()*p.round.Seconds()))
	var ledger, base phases
	for range rounds {
		runtime.GC()
		ph, err := oneByOne(ctx, 0, p.round, viaLedger)
		if err != nil {
			return nil, err
		}
		ledger = append(ledger, ph)
		if err := raw.prepare(rawN); err != nil {
			return nil, err
		}
		runtime.GC()
		if ph, err = oneByOne(ctx, rawN, 0, viaRaw); err != nil {
			return nil, fmt.Errorf("raw: %w", err)
		}
		base = append(base, ph)
	}
	return []benchRow{
		row("notify", "rotate to handler, p50", "ms", ledger.ms(0.5), base.ms(0.5), nil),
		row("notify", "rotate to handler, p99", "ms", ledger.ms(0.99), base.ms(0.99), ptr(valueBelow(50, "< 50 ms"))),
	}, nil
}

// oneByOne runs op n times, or with n == 0 for about d, one at a time; op
// measures its own latency.
func oneByOne(ctx context.Context, n int, d time.Duration, op func(context.Context) (time.Duration, error)) (phase, error) {
	var p phase
	start := time.Now()
	for i := 0; n > 0 && i < n || n == 0 && time.Since(start) < d; i++ {
		lat, err := op(ctx)
		if err != nil {
			return p, err
		}
		p.lat = append(p.lat, lat)
	}
	p.elapsed, p.ops = time.Since(start), len(p.lat)
	slices.Sort(p.lat)
	return p, nil
}
