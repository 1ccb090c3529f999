// Package app runs the ledger's commands and queries: it authenticates and
// authorizes the caller, takes the token's state from the projection, lets the
// domain decide, appends the event, and waits until the view shows it. The HTTP
// API, the CLI's server side and the benchmarks all drive the ledger through
// this package.
package app

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/projections"
)

// ErrUnauthenticated is the one answer for a secret that is missing, malformed,
// unknown, expired, rotated away or deleted: a caller learns nothing about which.
var ErrUnauthenticated = errors.New("unauthenticated: missing, malformed, unknown, expired or revoked token")

// ErrUnavailable wraps failures to reach the event store: the request may
// succeed if retried once NATS answers again.
var ErrUnavailable = errors.New("event store unavailable")

// ErrDisconnected: the ledger has no connection to NATS now (see
// WithConnectionCheck), so a command or a read of the stream is refused at
// once rather than after a timeout. Reads answered from the view still work.
// It is an ErrUnavailable.
var ErrDisconnected = fmt.Errorf("%w: not connected to NATS", ErrUnavailable)

// ForbiddenError says which permission rule denied a request, and on which
// field of the request (the caller's token is "Authorization"). The rules are
// the domain's (domain.Authorize).
type ForbiddenError = domain.ForbiddenError

// Ledger runs commands and queries.
type Ledger struct {
	store *eventstore.Store
	view  *projections.Tokens
	now   func() time.Time
	rand  io.Reader
	// readWait bounds how long a command or query waits for the view to reach a
	// sequence it was promised.
	readWait time.Duration
	// auditKey signs export manifests.
	auditKey ed25519.PrivateKey
	// reuse records rotated-away secrets presented again (see reuse.go).
	reuse reuseWriter
	// connected says whether the store can be reached now; nil: assume so.
	connected func() error
	// fresh bounds how far behind the stream the view may be while the
	// ledger authenticates (see fresh.go).
	fresh freshness
}

// Option changes a Ledger's defaults.
type Option func(*Ledger)

// WithClock makes the ledger read time from now (tests pin it).
func WithClock(now func() time.Time) Option { return func(l *Ledger) { l.now = now } }

// WithReadWait bounds how long commands and reads wait for the view (10 s by
// default).
func WithReadWait(d time.Duration) Option { return func(l *Ledger) { l.readWait = d } }

// WithRand makes the ledger draw ids and secrets from r.
func WithRand(r io.Reader) Option { return func(l *Ledger) { l.rand = r } }

// WithConnectionCheck makes the ledger ask connected before it writes to or
// reads from the stream; an error refuses the request at once with
// ErrDisconnected. Without it a request sent while NATS is unreachable waits
// for its timeout (5 s to publish, 10 s to catch up) before failing.
func WithConnectionCheck(connected func() error) Option {
	return func(l *Ledger) { l.connected = connected }
}

// reachable fails with ErrDisconnected when the connection check does.
func (l *Ledger) reachable() error {
	if l.connected == nil {
		return nil
	}
	if err := l.connected(); err != nil {
		return fmt.Errorf("%w: %w", ErrDisconnected, err)
	}
	return nil
}

// New returns a ledger writing to store and reading from view. Feeding view
// from store is the caller's job (see Run).
func New(store *eventstore.Store, view *projections.Tokens, opts ...Option) *Ledger {
	l := &Ledger{store: store, view: view, now: time.Now, rand: rand.Reader, readWait: 10 * time.Second}
	l.fresh.base, l.fresh.bound = time.Now(), DefaultMaxStaleness
	for _, o := range opts {
		o(l)
	}
	return l
}

// Now is the ledger's clock.
func (l *Ledger) Now() time.Time { return l.now() }

// Caller is an authenticated token and the request it acts through.
type Caller struct {
	Token     *domain.Token
	RequestID string
	SourceIP  string
	UserAgent string
}

func (c Caller) org() string { return c.Token.OrganizationID() }

// Authenticate resolves a bearer secret to its token, if it is active now,
// and notes the use (see projections.Tokens.MarkUsed). Every other secret
// gets ErrUnauthenticated alike; a rotated-away one is also reported, with
// the request's source, to be recorded as TokenReuseDetected in the
// background, so its answer takes no longer than any other refusal.
//
// A ledger that cannot show its view is within the staleness bound answers
// ErrStale instead (see WithMaxStaleness). A secret the view does not hold
// as active is judged again once the view has reached the stream's head as
// it is now: a token created or rotated through another ledger a moment ago
// works here too, rather than being refused (and charged as a failure).
// Every refusal but a malformed secret's takes that wait, so how long a
// refusal takes does not tell which kind it was.
func (l *Ledger) Authenticate(secret string, from Source) (*domain.Token, error) {
	v, err := l.verifyCurrent(secret)
	if err != nil {
		return nil, err
	}
	switch v.Outcome {
	case projections.OutcomeActive:
		l.view.MarkUsed(v, l.now())
		return v.Token(), nil
	case projections.OutcomeRotated:
		org, id := v.TokenKey()
		l.reportReuse(org, id, secret, from)
	}
	return nil, ErrUnauthenticated
}

// verifyCurrent is the view's verdict on secret, on a view shown current
// (see Authenticate).
func (l *Ledger) verifyCurrent(secret string) (projections.Verdict, error) {
	if err := l.current(); err != nil {
		return projections.Verdict{}, err
	}
	v := l.view.Verify(secret, l.now())
	if v.Outcome == projections.OutcomeActive || v.Outcome == projections.OutcomeMalformed || l.fresh.bound <= 0 {
		return v, nil
	}
	if err := l.reachHead(l.fresh.bound); err != nil {
		return projections.Verdict{}, err
	}
	return l.view.Verify(secret, l.now()), nil
}

// acting resolves the caller's token again, as it is now. A request is
// authenticated when its headers arrive and decided once its body has,
// which may be seconds later; whatever happened to its token in between
// counts, as if the request had arrived after it. A token deleted, rotated
// away from the secret the caller authenticated with, expired or quarantined
// since is ErrUnauthenticated; a token whose roles changed acts with the
// roles it has now.
func (l *Ledger) acting(c Caller) (Caller, error) {
	if c.Token == nil {
		return Caller{}, ErrUnauthenticated
	}
	v := l.view.Resume(c.org(), c.Token.ID(), c.Token.SecretHash(), l.now())
	if v.Outcome != projections.OutcomeActive {
		return Caller{}, ErrUnauthenticated
	}
	c.Token = v.Token()
	return c, nil
}

// judge is a command's authorization, asked again of the acting token as it
// is right before the command's event is appended (see append).
type judge func(actor *domain.Token) error

// operations names the operation each command is, for domain.Authorize.
var operations = map[domain.EventType]domain.Operation{
	domain.TokenCreated:    domain.OpCreate,
	domain.TokenUpdated:    domain.OpUpdate,
	domain.TokenRotated:    domain.OpRotate,
	domain.TokenAssigned:   domain.OpAssign,
	domain.TokenUnassigned: domain.OpUnassign,
	domain.TokenDeleted:    domain.OpDelete,
}

// Result is what a command did.
type Result struct {
	Token *domain.Token
	// Secret is set by create and rotate, and only on their first attempt: a
	// replayed retry cannot show a secret it did not store.
	Secret domain.Secret
	// Sequence is the stream sequence the command was written at (for a no-op,
	// the token's last event); a read passing it sees the command's effect.
	Sequence uint64
	// Replayed: the command was a retry of one already stored under the same
	// idempotency key, and nothing new was written.
	Replayed bool
}

// Run feeds the view from the stream until ctx ends: first the history, then
// live events. A message the view refuses is reported through report and
// skipped. Run follows again, from where the view got to and on a fresh
// consumer, whenever reading fails, the sequence has a gap, or the view stays
// behind the stream without progress for stallAfter (a consumer that stopped
// delivering); failures in a row wait longer each time. It returns when ctx
// ends.
//
// What the server delivered wrongly (eventstore.ErrBadDelivery: a message
// without its body, a consumer found changed, a gap) is the server's fault,
// not the events': nothing is refused or quarantined for it, and the view
// is marked faulty (view.SetFeedFault, which readiness reports) until a
// fresh consumer has been found sound.
func Run(ctx context.Context, store *eventstore.Store, view *projections.Tokens, report func(error)) {
	if report == nil {
		report = func(error) {}
	}
	pause := 100 * time.Millisecond
	for {
		from := view.Sequence() + 1
		followCtx, stop := context.WithCancelCause(ctx)
		watchDone := make(chan struct{})
		go func() {
			defer close(watchDone)
			watchStall(followCtx, store, view, func(err error) { stop(err) })
		}()
		want := from
		sound := eventstore.WhenConsumerChecked(func() { view.SetFeedFault(nil) })
		err := store.Follow(followCtx, from, func(r eventstore.Recorded) error {
			// The stream denies deletes, so its sequences have no gaps: a gap
			// means the consumer was tampered with (filtered, say).
			if r.Sequence != want {
				return fmt.Errorf("%w: got sequence %d, want %d", errGap, r.Sequence, want)
			}
			want++
			if r.Err != nil {
				view.Refuse(r.Sequence, r.OrganizationID, r.TokenID)
				report(fmt.Errorf("refused: %w", r.Err))
				return nil
			}
			if err := view.Apply(r.Sequence, r.Event); err != nil {
				report(fmt.Errorf("refused: %w", err))
			}
			return nil
		}, sound)
		if cause := context.Cause(followCtx); cause != nil && ctx.Err() == nil && errors.Is(err, context.Canceled) {
			err = cause // the watchdog stopped it
		}
		stop(nil)
		<-watchDone
		if ctx.Err() != nil {
			return
		}
		err = fmt.Errorf("reading the stream stopped at sequence %d, following again: %w", view.Sequence(), err)
		if errors.Is(err, eventstore.ErrBadDelivery) {
			view.SetFeedFault(err) // before the report: whoever reads it sees not ready
		}
		report(err)
		if view.Sequence() >= from {
			pause = 100 * time.Millisecond // it made progress: not a tight failure loop
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, 5*time.Second)
	}
}

// stallAfter is how long the view may stay behind the stream without applying
// anything before Run gives up on the consumer feeding it.
const stallAfter = 2 * time.Second

var errStalled = errors.New("the view made no progress while behind the stream")

// watchStall calls stop when the view is behind the stream's last sequence
// and has not moved for stallAfter.
func watchStall(ctx context.Context, store *eventstore.Store, view *projections.Tokens, stop func(error)) {
	tick := time.NewTicker(stallAfter / 4)
	defer tick.Stop()
	seen, since := view.Sequence(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if now := view.Sequence(); now != seen {
			seen, since = now, time.Now()
			continue
		}
		if time.Since(since) < stallAfter {
			continue
		}
		// Briefly: while a cluster elects the stream's leader the question
		// waits for a timeout of seconds, and a stalled view is asked about
		// again at the next tick rather than after another stallAfter.
		askCtx, cancel := context.WithTimeout(ctx, stallAfter/4)
		last, err := store.LastSequence(askCtx)
		cancel()
		if err != nil {
			continue
		}
		if last > seen {
			stop(fmt.Errorf("%w (at %d of %d for %s)", errStalled, seen, last, stallAfter))
			return
		}
		since = time.Now()
	}
}

// errGap is a bad delivery: the stream denies deletes, so only a consumer
// tampered with (filtered, say) skips a sequence.
var errGap = fmt.Errorf("%w: gap in the stream's sequence", eventstore.ErrBadDelivery)

// Feed runs Run in the background; stop ends it and waits until it has.
func Feed(store *eventstore.Store, view *projections.Tokens, report func(error)) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, store, view, report)
	}()
	return func() { cancel(); <-done }
}

// CatchUp waits until the view has applied everything the stream held when it
// was called.
func (l *Ledger) CatchUp(ctx context.Context) error {
	if err := l.reachable(); err != nil {
		return err
	}
	last, err := l.store.LastSequence(ctx)
	if err != nil {
		return err
	}
	return l.view.WaitFor(ctx, last)
}

// catchUp is CatchUp within the ledger's read bound, failing as unavailable.
func (l *Ledger) catchUp(ctx context.Context) error {
	if err := l.reachable(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, l.readWait)
	defer cancel()
	if err := l.CatchUp(ctx); err != nil {
		return fmt.Errorf("%w: the token view is behind the stream: %w", ErrUnavailable, err)
	}
	return nil
}

// env is what a command takes from the ledger. request, the command's
// parameters, is hashed into the events of keyed commands.
func (l *Ledger) env(c Caller, key string, request any) domain.Env {
	e := domain.Env{
		Now:  l.now(),
		Rand: l.rand,
		Actor: domain.Actor{
			TokenID:   c.Token.ID(),
			RequestID: c.RequestID,
			SourceIP:  c.SourceIP,
			UserAgent: c.UserAgent,
		},
		IdempotencyKey: key,
	}
	if key != "" {
		e.EventID = idempotentEventID(c, key)
		b, _ := json.Marshal(request)
		sum := sha256.Sum256(b)
		e.RequestHash = hex.EncodeToString(sum[:16])
	}
	return e
}

// idempotentEventID is the event id of a command sent under key by c's
// token: a key is its acting token's, so another caller using the same key
// neither replays this one's command nor uses the key up for it. A key holds
// no space (checkKey), so no token id and key run together into another
// pair's, nor into an id derived from a key alone (as events written before
// keys were the acting token's were).
func idempotentEventID(c Caller, key string) string {
	return domain.IdempotentEventID(c.org(), c.Token.ID()+" "+key)
}

// CreateToken creates a token in the caller's organization.
func (l *Ledger) CreateToken(ctx context.Context, c Caller, cmd domain.CreateToken, idempotencyKey string) (Result, error) {
	c, err := l.acting(c)
	if err != nil {
		return Result{}, err
	}
	if err := domain.CanChangeAny(c.Token); err != nil {
		return Result{}, err
	}
	if cmd.OrganizationID == "" {
		cmd.OrganizationID = c.org()
	} else if cmd.OrganizationID != c.org() {
		return Result{}, &ForbiddenError{Field: "organization_id", Rule: "a token acts only in its own organization (" + c.org() + ")"}
	}
	if err := checkKey(idempotencyKey); err != nil {
		return Result{}, err
	}
	env := l.env(c, idempotencyKey, keyedRequest{Type: domain.TokenCreated, Params: cmd})
	// Decided (a pure function) and judged before a retry is answered: a
	// caller must not learn from a replay what it could not do itself.
	tok, e, secret, err := domain.Create(cmd, env)
	if err != nil {
		return Result{}, err
	}
	if err := domain.Authorize(c.Token, domain.OpCreate, nil, tok); err != nil {
		return Result{}, err
	}
	if res, done, err := l.replayed(ctx, c, env, domain.TokenCreated, ""); done {
		return res, err
	}
	may := func(actor *domain.Token) error { return domain.Authorize(actor, domain.OpCreate, nil, tok) }
	if tok.Scope() == domain.ScopeDeployment {
		// A deployment's tokens share one workspace: judged on the whole
		// organization, and stored only if it has not changed since.
		return l.appendJudged(ctx, c, e, tok, secret, may, func() error { return l.deploymentMayMove(c, tok) })
	}
	return l.append(ctx, c, e, tok, onToken(0), secret, may)
}

// deploymentMayMove checks that a deployment token names its deployment's
// workspace. The one exception corrects a deployment bound to the wrong
// workspace (by a squatter, say): an ORGANIZATION_OWNER may name another
// workspace once the deployment has no active token left in the old one
// (delete them first: they stop working at once), and the deployment then
// belongs to the new one.
func (l *Ledger) deploymentMayMove(c Caller, tok *domain.Token) error {
	ws, ok := l.view.DeploymentWorkspace(tok.OrganizationID(), tok.DeploymentID())
	if !ok || ws == tok.WorkspaceID() {
		return nil
	}
	if c.Token.Role() != domain.RoleOrganizationOwner {
		// Which workspace is not said: the caller may not be able to read it.
		return &domain.StateError{Field: "deployment_id", Rule: fmt.Sprintf("deployment %s belongs to another workspace than %s; a deployment token names its deployment's workspace (an %s can move a deployment)", tok.DeploymentID(), tok.WorkspaceID(), domain.RoleOrganizationOwner)}
	}
	if active := l.view.InDeployment(tok.OrganizationID(), tok.DeploymentID(), l.now()); len(active) > 0 {
		return &domain.StateError{Field: "deployment_id", Rule: fmt.Sprintf("deployment %s belongs to workspace %s and has %d active token(s) there; delete them first to move it to %s", tok.DeploymentID(), ws, len(active), tok.WorkspaceID())}
	}
	return nil
}

// CommandOption changes how one command on an existing token runs.
type CommandOption func(*commandOptions)

type commandOptions struct {
	version uint64 // 0: any
}

// IfVersion makes a command apply only to the token at version v, the version
// its caller read (HTTP If-Match): any other version, whatever moved it, is
// domain.ErrConflict and nothing is written. Of concurrent commands sent with
// the same version, exactly one succeeds. Without it a command applies to the
// token as the ledger finds it, and conflicts only when another command gets
// in between that read and the write.
func IfVersion(v uint64) CommandOption { return func(o *commandOptions) { o.version = v } }

// UpdateToken changes a token's name, description or role.
func (l *Ledger) UpdateToken(ctx context.Context, c Caller, id string, cmd domain.UpdateToken, idempotencyKey string, opts ...CommandOption) (Result, error) {
	return l.execute(ctx, c, id, idempotencyKey, opts, domain.TokenUpdated, cmd, func(t *domain.Token, env domain.Env) (domain.Event, domain.Secret, bool, error) {
		e, changed, err := t.Update(cmd, env)
		return e, domain.Secret{}, changed, err
	})
}

// RotateToken gives a token a new secret; the old one stops working at once.
func (l *Ledger) RotateToken(ctx context.Context, c Caller, id, idempotencyKey string, opts ...CommandOption) (Result, error) {
	return l.execute(ctx, c, id, idempotencyKey, opts, domain.TokenRotated, nil, func(t *domain.Token, env domain.Env) (domain.Event, domain.Secret, bool, error) {
		e, s, err := t.Rotate(env)
		return e, s, err == nil, err
	})
}

// AssignToken gives an organization token a role in a workspace.
func (l *Ledger) AssignToken(ctx context.Context, c Caller, id, workspaceID, role, idempotencyKey string, opts ...CommandOption) (Result, error) {
	return l.execute(ctx, c, id, idempotencyKey, opts, domain.TokenAssigned, [2]string{workspaceID, role}, func(t *domain.Token, env domain.Env) (domain.Event, domain.Secret, bool, error) {
		e, changed, err := t.Assign(workspaceID, role, env)
		return e, domain.Secret{}, changed, err
	})
}

// UnassignToken removes an organization token's role in a workspace.
func (l *Ledger) UnassignToken(ctx context.Context, c Caller, id, workspaceID, idempotencyKey string, opts ...CommandOption) (Result, error) {
	return l.execute(ctx, c, id, idempotencyKey, opts, domain.TokenUnassigned, workspaceID, func(t *domain.Token, env domain.Env) (domain.Event, domain.Secret, bool, error) {
		e, err := t.Unassign(workspaceID, env)
		return e, domain.Secret{}, err == nil, err
	})
}

// DeleteToken deletes a token for good.
func (l *Ledger) DeleteToken(ctx context.Context, c Caller, id, idempotencyKey string, opts ...CommandOption) (Result, error) {
	return l.execute(ctx, c, id, idempotencyKey, opts, domain.TokenDeleted, nil, func(t *domain.Token, env domain.Env) (domain.Event, domain.Secret, bool, error) {
		e, err := t.Delete(env)
		return e, domain.Secret{}, err == nil, err
	})
}

type decision func(t *domain.Token, env domain.Env) (e domain.Event, s domain.Secret, changed bool, err error)

// execute runs a command of type typ on an existing token of the caller's
// organization. A retry under an idempotency key is answered before the
// decision: the token has moved on since the first attempt (a retried delete
// would find it deleted), and the answer must be the first attempt's.
func (l *Ledger) execute(ctx context.Context, c Caller, id, key string, opts []CommandOption, typ domain.EventType, params any, decide decision) (Result, error) {
	var o commandOptions
	for _, f := range opts {
		f(&o)
	}
	op := operations[typ]
	c, err := l.acting(c)
	if err != nil {
		return Result{}, err
	}
	if err := domain.CanChangeAny(c.Token); err != nil {
		return Result{}, err
	}
	if err := checkKey(key); err != nil {
		return Result{}, err
	}
	// The token's place decides who may touch it: judged before anything
	// else is said about it, a retry's answer included.
	tok, last, err := l.getLatest(c, id)
	if err != nil {
		return Result{}, err
	}
	if err := domain.Authorize(c.Token, op, tok, nil); err != nil {
		return Result{}, err
	}
	env := l.env(c, key, keyedRequest{Type: typ, TokenID: id, Params: params})
	if res, done, err := l.replayed(ctx, c, env, typ, id); done {
		return res, err
	}
	if o.version != 0 {
		if tok, last, err = l.atVersion(ctx, c, id, tok, last, o.version); err != nil {
			return Result{}, err
		}
	}
	for attempt := 1; ; attempt++ {
		res, err := l.decideAndAppend(ctx, c, op, tok, last, env, decide)
		if !errors.Is(err, domain.ErrConflict) || attempt == maxReuseRetries {
			return res, err
		}
		// A TokenReuseDetected (the ledger's own record of an old secret
		// presented again) moves a token's version without changing it. A
		// command that lost the race only to such events is decided again
		// on the token as it now stands, a conditional one too (the token
		// is still as it was at the version its caller named); one that
		// lost to a real change stays a conflict, for its caller to judge.
		if err := l.catchUp(ctx); err != nil {
			return Result{}, err
		}
		fresh, freshLast, ferr := l.get(c, id)
		if ferr != nil || !fresh.UnchangedSince(tok.Version()) {
			return res, err
		}
		tok, last = fresh, freshLast
	}
}

// atVersion returns the token (and its last sequence) if it is as it was at
// version want (at it, or moved on by reuse events alone), and ErrConflict
// if not. A caller may have read a version this view
// has not reached yet (from another ledger, say): the view catches up before
// the version is judged.
func (l *Ledger) atVersion(ctx context.Context, c Caller, id string, tok *domain.Token, last, want uint64) (*domain.Token, uint64, error) {
	if tok.Version() < want {
		if err := l.catchUp(ctx); err != nil {
			return nil, 0, err
		}
		var err error
		if tok, last, err = l.get(c, id); err != nil {
			return nil, 0, err
		}
	}
	// Reuse events since want changed nothing about the token: the command
	// applies to it as it stands, and is appended on its real head (the
	// store's expected last sequence is the token's last event, reuse
	// events included).
	if !tok.UnchangedSince(want) {
		return nil, 0, fmt.Errorf("token %s is at version %d, changed at %d, not %d: %w", id, tok.Version(), tok.ChangedVersion(), want, domain.ErrConflict)
	}
	return tok, last, nil
}

// maxReuseRetries bounds how often a command is decided again after losing
// the race to TokenReuseDetected events alone (a burst of old-secret
// attempts; the failed-authentication limit bounds how long one lasts).
const maxReuseRetries = 10

// decideAndAppend decides the command on tok (stored up to stream sequence
// last) and appends its event.
func (l *Ledger) decideAndAppend(ctx context.Context, c Caller, op domain.Operation, tok *domain.Token, last uint64, env domain.Env, decide decision) (Result, error) {
	// The domain applies its event to the token it decides on: next becomes
	// the state after the command, tok stays the state before.
	next := tok.Clone()
	e, secret, changed, err := decide(next, env)
	if err != nil {
		return Result{}, fmt.Errorf("token %s: %w", tok.ID(), err)
	}
	if err := domain.Authorize(c.Token, op, tok, next); err != nil {
		return Result{}, err // a role above the caller's own
	}
	if !changed {
		return Result{Token: tok, Sequence: last}, nil
	}
	may := func(actor *domain.Token) error { return domain.Authorize(actor, op, tok, next) }
	if tok.Role() == domain.RoleOrganizationOwner && (next.Role() != domain.RoleOrganizationOwner || next.Deleted()) {
		// Owner losses are judged on the whole organization (neither two
		// owners removing each other through two ledgers at once nor a view
		// that lags can let the last one go), and stored only if nothing in
		// the organization changed since.
		return l.appendJudged(ctx, c, e, next, secret, may, func() error {
			if _, now, ok := l.view.Get(c.org(), tok.ID()); !ok || now != last {
				// Decided on a state of the token that is gone: execute
				// decides again (or reports the conflict).
				return fmt.Errorf("token %s changed since it was read: %w", tok.ID(), domain.ErrConflict)
			}
			return l.keepAnOwner(c, tok, next)
		})
	}
	x, err := l.expectationFor(tok, last)
	if err != nil {
		return Result{}, err
	}
	return l.append(ctx, c, e, next, x, secret, may)
}

// expectationFor is what an append on tok, as stored up to sequence last,
// expects of the stream. An owner token's appends, all of them, expect the
// organization's last sequence, as owner losses do (appendJudged): on a
// clustered stream JetStream keeps concurrent appends apart only when they
// name the same subject filter, so a loss expecting the organization's
// sequence and, say, a rename of the same token expecting the token's
// could both be stored on one version (the multi-instance suite saw it).
// The organization's sequence is read before the token is checked to be
// still at last: the view only moves forward.
func (l *Ledger) expectationFor(tok *domain.Token, last uint64) (expectation, error) {
	if tok.Role() != domain.RoleOrganizationOwner {
		return onToken(last), nil
	}
	orgLast := l.view.OrganizationSequence(tok.OrganizationID())
	if _, now, ok := l.view.Get(tok.OrganizationID(), tok.ID()); !ok || now != last {
		return expectation{}, fmt.Errorf("token %s changed since it was read: %w", tok.ID(), domain.ErrConflict)
	}
	return onOrganization(orgLast), nil
}

// appendExpecting stores e as x says.
func (l *Ledger) appendExpecting(ctx context.Context, e domain.Event, x expectation) (eventstore.Appended, error) {
	if x.org {
		return l.store.AppendInOrganization(ctx, e, x.last)
	}
	return l.store.Append(ctx, e, x.last)
}

// expectation is what an append expects of the stream: the token's last
// sequence, or the organization's (see eventstore.Store.AppendInOrganization).
type expectation struct {
	last uint64
	org  bool
}

func onToken(last uint64) expectation        { return expectation{last: last} }
func onOrganization(last uint64) expectation { return expectation{last: last, org: true} }

// maxJudgedTries bounds how often a command judged on its organization is
// judged again because another event in the organization was stored first.
const maxJudgedTries = 20

// appendJudged appends e after rule, a rule spanning the organization's
// tokens, judged it on a view that has caught up with the stream. The
// organization's last sequence is read before the rule is judged (the view
// only moves forward, so the judgement saw at least that), and the append
// expects it: an event stored in the organization since, through any
// ledger, is a conflict, and the rule is judged again on the newer view.
// This is what holds such rules across ledgers: the stream, not a lock.
func (l *Ledger) appendJudged(ctx context.Context, c Caller, e domain.Event, after *domain.Token, secret domain.Secret, may judge, rule func() error) (Result, error) {
	for try := 1; ; try++ {
		if err := l.catchUp(ctx); err != nil {
			return Result{}, err
		}
		orgLast := l.view.OrganizationSequence(c.org())
		if err := rule(); err != nil {
			return Result{}, err
		}
		res, err := l.append(ctx, c, e, after, onOrganization(orgLast), secret, may)
		if !errors.Is(err, domain.ErrConflict) || res.Replayed || try == maxJudgedTries {
			return res, err
		}
		// Someone else's event got in first; back off a little, at random,
		// so ledgers racing on one organization do not keep colliding.
		if err := sleepCtx(ctx, time.Duration(try)*time.Millisecond*time.Duration(1+randByte(l.rand)%8)); err != nil {
			return Result{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func randByte(r io.Reader) int {
	var b [1]byte
	_, _ = io.ReadFull(r, b[:])
	return int(b[0])
}

// keepAnOwner refuses a change that would leave the organization without an
// active ORGANIZATION_OWNER token that never expires: nobody could manage it
// any more, and the bootstrap token is only made for an empty stream. It is
// judged within appendJudged, which makes it hold across ledgers.
func (l *Ledger) keepAnOwner(c Caller, before, after *domain.Token) error {
	if after.Role() == domain.RoleOrganizationOwner && !after.Deleted() {
		return nil
	}
	now := l.now()
	losing := false
	for _, t := range l.view.List(c.org()) {
		switch {
		case !lastingOwner(t, now):
		case t.Token.ID() == before.ID():
			losing = true
		default:
			return nil // another lasting owner remains
		}
	}
	if !losing {
		return nil // there was no lasting owner to lose
	}
	return &domain.StateError{Field: "token_id", Rule: "this is the organization's last active ORGANIZATION_OWNER token that never expires; create another first"}
}

// lastingOwner: an owner token that can act now and will not expire.
func lastingOwner(t projections.Listed, now time.Time) bool {
	return t.Token.Role() == domain.RoleOrganizationOwner && t.Token.Status(now) == domain.StatusActive &&
		t.Token.ExpiresAt().IsZero() && !t.Quarantined
}

// replayed answers a command whose idempotency key the view has already seen.
// done is false when the key is new (or there is none).
func (l *Ledger) replayed(ctx context.Context, c Caller, env domain.Env, typ domain.EventType, id string) (Result, bool, error) {
	if env.IdempotencyKey == "" {
		return Result{}, false, nil
	}
	a, ok := l.view.Keyed(env.EventID)
	if !ok {
		return Result{}, false, nil
	}
	res, err := l.replay(ctx, c, domain.Event{Type: typ, TokenID: id, RequestHash: env.RequestHash}, a)
	return res, true, err
}

// keyedRequest is what identifies a keyed command's request.
type keyedRequest struct {
	Type    domain.EventType
	TokenID string
	Params  any
}

// append stores e, which took the token to the state after, and answers with
// that state. Once JetStream has acknowledged the event the command has
// happened, and its answer must reach the caller (after a rotation, the secret
// in it is the only one that works): waiting for the view then only serves the
// caller's next read, and a view that lags does not turn success into failure.
//
// A retry under an idempotency key that the view has not seen yet is caught
// here: by JetStream's duplicate window, or, when the first attempt already
// moved the token on, by a conflict after which the view knows the key.
//
// The acting token is resolved again first and the command judged again by
// it (may): a command that waited (for a lock, for the view to catch up)
// while its token was deleted, rotated or demoted is refused as if it had
// arrived after.
func (l *Ledger) append(ctx context.Context, c Caller, e domain.Event, after *domain.Token, x expectation, secret domain.Secret, may judge) (Result, error) {
	c, err := l.acting(c)
	if err != nil {
		return Result{}, err
	}
	if err := may(c.Token); err != nil {
		return Result{}, err
	}
	if err := l.reachable(); err != nil {
		return Result{}, err
	}
	ap, err := l.appendExpecting(ctx, e, x)
	switch {
	case errors.Is(err, domain.ErrConflict):
		if e.IdempotencyKey != "" && l.catchUp(ctx) == nil {
			if a, ok := l.view.Keyed(e.ID); ok {
				return l.replay(ctx, c, e, a)
			}
		}
		return Result{}, err
	case err != nil:
		// The event may have been stored all the same (the acknowledgement
		// lost in a failover; a retry of the same key racing this one
		// through another ledger): a keyed command the stream holds is
		// answered as its replay rather than failed.
		if e.IdempotencyKey != "" && l.catchUp(ctx) == nil {
			if a, ok := l.view.Keyed(e.ID); ok {
				return l.replay(ctx, c, e, a)
			}
		}
		return Result{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	case ap.Duplicate:
		if err := l.waitFor(ctx, ap.Sequence); err != nil {
			return Result{}, err
		}
		a, ok := l.view.Keyed(e.ID)
		if !ok {
			return Result{}, fmt.Errorf("idempotency key: stored at sequence %d but not in the view", ap.Sequence)
		}
		return l.replay(ctx, c, e, a)
	}
	_ = l.waitFor(ctx, ap.Sequence) // best effort, see above
	return Result{Token: after, Secret: secret, Sequence: ap.Sequence}, nil
}

func (l *Ledger) replay(ctx context.Context, c Caller, e domain.Event, a projections.Applied) (Result, error) {
	if tok, _, ok := l.view.Get(c.org(), a.TokenID); ok && !domain.CanRead(c.Token, tok) {
		// Keys are the acting token's, but what it may read can have
		// changed since it used this one (a demotion, a workspace role
		// taken away): a replay must not tell it about a token it can no
		// longer see, not even its id.
		return Result{}, domain.Invalid("idempotency_key", "already used for another command")
	}
	sameTarget := a.TokenID == e.TokenID || e.Type == domain.TokenCreated
	if a.Type != e.Type || !sameTarget {
		return Result{}, domain.Invalid("idempotency_key", fmt.Sprintf("already used for another command (%s on %s)", a.Type, a.TokenID))
	}
	if a.RequestHash != "" && a.RequestHash != e.RequestHash {
		return Result{}, domain.Invalid("idempotency_key", fmt.Sprintf("already used for %s on %s with other parameters; a retry must repeat the request exactly", a.Type, a.TokenID))
	}
	if err := l.waitFor(ctx, a.Sequence); err != nil {
		return Result{}, err
	}
	tok, _, _ := l.view.Get(c.org(), a.TokenID)
	return Result{Token: tok, Sequence: a.Sequence, Replayed: true}, nil
}

func (l *Ledger) waitFor(ctx context.Context, seq uint64) error {
	ctx, cancel := context.WithTimeout(ctx, l.readWait)
	defer cancel()
	if err := l.view.WaitFor(ctx, seq); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return nil
}

// MaxIdempotencyKeyLen bounds the idempotency key a caller may send.
const MaxIdempotencyKeyLen = 200

func checkKey(key string) error {
	if len(key) > MaxIdempotencyKeyLen {
		return domain.Invalid("idempotency_key", fmt.Sprintf("at most %d bytes", MaxIdempotencyKeyLen))
	}
	for _, r := range key {
		if r < 0x21 || r > 0x7e {
			return domain.Invalid("idempotency_key", "printable ASCII without spaces only")
		}
	}
	return nil
}

func (l *Ledger) get(c Caller, id string) (*domain.Token, uint64, error) {
	tok, last, ok := l.view.Get(c.org(), id)
	if !ok {
		return nil, 0, &domain.NotFoundError{Field: "token_id", Rule: fmt.Sprintf("no token %q in organization %s", clip(id), c.org())}
	}
	return tok, last, nil
}

// getLatest is get, but a token the view does not hold yet is looked for
// again once the view has reached the stream's head: it may have been
// created through another ledger a moment ago.
func (l *Ledger) getLatest(c Caller, id string) (*domain.Token, uint64, error) {
	tok, last, err := l.get(c, id)
	var nf *domain.NotFoundError
	if errors.As(err, &nf) && l.fresh.bound > 0 && l.reachHead(l.fresh.bound/2) == nil {
		return l.get(c, id)
	}
	return tok, last, err
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// Verify says whether a secret is active now and, if the caller may read its
// token, which token it is. Any token may ask; a secret whose token the
// caller may not read (another organization's, another workspace's) is
// answered as unknown, so verify tells nobody what they could not look up.
func (l *Ledger) Verify(ctx context.Context, c Caller, secret string) (projections.Verdict, error) {
	return l.VerifyAfter(ctx, c, secret, 0)
}

// VerifyAfter is Verify on a view that has reached stream sequence minSeq:
// a service that has seen an event (a rotation, say) asks for an answer
// that takes it into account, whichever ledger it asks and however far
// behind that ledger's view is.
func (l *Ledger) VerifyAfter(ctx context.Context, c Caller, secret string, minSeq uint64) (projections.Verdict, error) {
	if err := l.waitForRead(ctx, minSeq); err != nil {
		return projections.Verdict{}, err
	}
	// Its body came after its headers were authenticated: judged by the
	// caller's token as it is now.
	c, err := l.acting(c)
	if err != nil {
		return projections.Verdict{}, err
	}
	v, err := l.verifyCurrent(secret)
	if err != nil {
		return projections.Verdict{}, err
	}
	if t := v.Token(); t != nil && !domain.CanRead(c.Token, t) {
		return projections.Verdict{Outcome: projections.OutcomeUnknown}, nil
	}
	return v.ShownTo(c.Token), nil
}

// Bootstrap creates the first ORGANIZATION_OWNER token, named "bootstrap", if
// the stream is empty. save, if not nil, must store the secret durably before
// the token exists: once the event is in the stream no second bootstrap will
// run, so a secret lost after that would lock the organization out. Bootstrap
// returns the token and secret only when it created the token; when several
// ledgers start on one empty stream, exactly one does.
func (l *Ledger) Bootstrap(ctx context.Context, org string, save func(domain.Secret) error) (*domain.Token, domain.Secret, error) {
	last, err := l.store.LastSequence(ctx)
	if err != nil || last > 0 {
		return nil, domain.Secret{}, err
	}
	tok, e, secret, err := domain.Create(domain.CreateToken{
		OrganizationID: org,
		Scope:          string(domain.ScopeOrganization),
		Name:           "bootstrap",
		Description:    "created by the ledger's first start; rotate it, or delete it once you have another owner token",
		Role:           string(domain.RoleOrganizationOwner),
	}, domain.Env{Now: l.now(), Rand: l.rand, Actor: domain.Actor{TokenID: domain.SystemActor}})
	if err != nil {
		return nil, domain.Secret{}, fmt.Errorf("bootstrap token: %w", err)
	}
	if save != nil {
		if err := save(secret); err != nil {
			return nil, domain.Secret{}, fmt.Errorf("bootstrap token: save secret: %w", err)
		}
	}
	ap, err := l.store.AppendIfEmpty(ctx, e)
	if err != nil {
		if errors.Is(err, domain.ErrConflict) {
			return nil, domain.Secret{}, nil // another ledger bootstrapped first
		}
		return nil, domain.Secret{}, fmt.Errorf("bootstrap token: %w", err)
	}
	_ = l.waitFor(ctx, ap.Sequence)
	return tok, secret, nil
}
