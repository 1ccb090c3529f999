// Package projections builds the read views of the ledger from the event
// stream. Events reach a view only through Apply, whether they are replayed at
// start-up or arrive live, so the two can never disagree.
package projections

import (
	"context"
	"crypto/subtle"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// Tokens is the current state of every token, indexed for the questions the API
// asks: by id, by organization, and by secret hash for verification.
type Tokens struct {
	mu     sync.RWMutex
	byKey  map[tokenKey]*entry
	byHash map[domain.SecretHash]*entry
	// byPlace holds, for each workspace and deployment, the tokens that hold a
	// role there (see places).
	byPlace map[place]map[*entry]struct{}
	retired map[domain.SecretHash]retiredSecret
	// deployments binds each deployment (tokenKey{org, deployment id}) to the
	// workspace its newest token named: the ledger knows deployments only
	// through their tokens, and a deployment must not change workspace when
	// its tokens are gone. Only an ORGANIZATION_OWNER's create may name
	// another workspace (app checks it), so the binding moves only then.
	deployments map[tokenKey]deploymentBinding
	// keyed remembers events written under an idempotency key, by event id, so a
	// retried command is answered with what the first attempt did.
	keyed map[string]Applied
	seq   uint64
	// orgLast is the sequence of each organization's last message, applied
	// or refused: what a rule spanning an organization's tokens was judged
	// at (see OrganizationSequence).
	orgLast map[string]uint64
	// notify is closed and replaced to wake WaitFor callers, once the view
	// reaches wakeAt, the lowest sequence any of them waits for (0: nobody
	// waits). Waking only then keeps a replay that someone waits on from
	// waking them at every event.
	notify chan struct{}
	wakeAt uint64
	// capturing counts snapshots being taken; while any is, Apply replaces a
	// token rather than change it in place (see capture).
	capturing int
	// rejected counts stream messages that could not be applied (see Apply).
	rejected int
	// uses counts the last-use stamps MarkUsed has moved, and usesSaved is
	// its value when the last snapshot file was written: a snapshot is
	// worth saving when either the sequence or this has moved.
	uses      atomic.Uint64
	usesSaved atomic.Uint64
	// feedFault is why the view's feed cannot be trusted now (see
	// SetFeedFault); nil: no known fault.
	feedFault atomic.Pointer[error]
	// onUse is told of each last use MarkUsed moves (see OnUse).
	onUse atomic.Pointer[func(org, id string, at time.Time)]
}

type tokenKey struct{ org, id string }

type entry struct {
	token   *domain.Token
	lastSeq uint64
	// quarantined: the token's history holds a message the view could not
	// apply, so what the view believes about it may be wrong. Verification
	// fails closed for it; commands still work (a delete or a new token is the
	// way out), because the stream's per-token sequence is still tracked.
	quarantined bool
	// lastUsed is when the token last authenticated a request, in Unix
	// seconds (0: not known). It is not in any event: uses are far too many
	// to record, and the view keeps it in memory (and in its snapshots),
	// moved by MarkUsed at most every LastUsedEvery, without the view's lock.
	lastUsed atomic.Int64
}

// copyToken is a copy of the entry's token for a reader, stamped with its
// last use.
func (e *entry) copyToken() *domain.Token {
	t := e.token.Clone()
	if u := e.lastUsed.Load(); u != 0 {
		t.SetLastUsedAt(time.Unix(u, 0))
	}
	return t
}

type retiredSecret struct {
	ent *entry
	// hash is the retired secret's hash (also the map's key), kept so that
	// Verify compares it in constant time as it does a live one.
	hash   domain.SecretHash
	reason Outcome
}

// noEntry stands in for the token when a secret matches none, so that
// Verify copies and compares as much for an unknown secret as for a known
// one. It is never changed.
var noEntry = &entry{token: &domain.Token{}}

// Applied is where an event landed.
type Applied struct {
	Sequence    uint64
	TokenID     string
	Type        domain.EventType
	RequestHash string
}

// NewTokens returns an empty view.
func NewTokens() *Tokens {
	return &Tokens{
		byKey:   make(map[tokenKey]*entry),
		byHash:  make(map[domain.SecretHash]*entry),
		byPlace: make(map[place]map[*entry]struct{}),
		retired: make(map[domain.SecretHash]retiredSecret),
		keyed:   make(map[string]Applied),
		orgLast: make(map[string]uint64),

		deployments: make(map[tokenKey]deploymentBinding),
		notify:      make(chan struct{}),
	}
}

// Apply folds the event stored at stream sequence seq into the view. An event
// that does not continue its token's history (which the ledger's own appends
// cannot produce) is refused as Refuse would; the error says why.
func (v *Tokens) Apply(seq uint64, e domain.Event) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	defer v.advance(seq)
	if seq <= v.seq {
		return nil // already applied (a replayed tail after a snapshot, say)
	}
	v.orgLast[e.OrganizationID] = seq
	key := tokenKey{e.OrganizationID, e.TokenID}
	ent := v.byKey[key]
	if ent == nil {
		tok, err := domain.NewFromCreated(e)
		if err != nil {
			v.refuse(seq, key)
			return fmt.Errorf("event %s at sequence %d: %w", e.ID, seq, err)
		}
		ent = &entry{token: tok}
		v.byKey[key] = ent
		v.reindex(ent, indexed{}, e.Type)
		v.bindDeployment(tok)
	} else {
		// The token changes in place, under the write lock: no reader keeps a
		// pointer to it past its read lock (Get, List and the role view hand
		// out copies; Verify a value). Apply checks the event before it
		// changes anything, so a refused event leaves the token as it was.
		// Only what the indexes need of the token before is kept, not a copy
		// of it: a copy per event is garbage the collector pays for in a
		// rebuild.
		prev := indexedFacts(ent.token, e.Type)
		target := ent.token
		if v.capturing > 0 {
			target = target.Clone() // a snapshot is reading the token: leave it be
		}
		if err := target.Apply(e); err != nil {
			v.refuse(seq, key)
			return fmt.Errorf("event %s at sequence %d: %w", e.ID, seq, err)
		}
		ent.token = target
		v.reindex(ent, prev, e.Type)
	}
	ent.lastSeq = seq
	if e.IdempotencyKey != "" {
		v.keyed[e.ID] = Applied{Sequence: seq, TokenID: e.TokenID, Type: e.Type, RequestHash: e.RequestHash}
	}
	return nil
}

// deploymentBinding is a deployment's workspace and the token that named it.
type deploymentBinding struct {
	workspaceID string
	created     time.Time
	tokenID     string
}

// bindDeployment records the workspace of t's deployment if t is its newest
// token (by creation time, then id: a snapshot restores tokens in no
// particular order, and must come to the same binding as a replay).
func (v *Tokens) bindDeployment(t *domain.Token) {
	if t.Scope() != domain.ScopeDeployment {
		return
	}
	key := tokenKey{t.OrganizationID(), t.DeploymentID()}
	b, ok := v.deployments[key]
	if ok && (t.CreatedAt().Before(b.created) || t.CreatedAt().Equal(b.created) && t.ID() < b.tokenID) {
		return
	}
	v.deployments[key] = deploymentBinding{workspaceID: t.WorkspaceID(), created: t.CreatedAt(), tokenID: t.ID()}
}

// DeploymentWorkspace is the workspace deployment dep of org belongs to:
// the one its newest token named, whether or not any of its tokens still
// acts.
func (v *Tokens) DeploymentWorkspace(org, dep string) (string, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	b, ok := v.deployments[tokenKey{org, dep}]
	return b.workspaceID, ok
}

// Refuse records that the message at stream sequence seq, stored on the
// subject of token (org, tokenID), is not a valid event. The view counts it,
// moves past it, quarantines the token it was filed under, and keeps that
// token's last sequence in step with the stream so commands on it still pass
// JetStream's per-token check.
func (v *Tokens) Refuse(seq uint64, org, tokenID string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	defer v.advance(seq)
	if seq > v.seq {
		v.orgLast[org] = seq
		v.refuse(seq, tokenKey{org, tokenID})
	}
}

// OrganizationSequence is the stream sequence of the last message the view
// holds for the organization (0: none). Taken before a rule spanning the
// organization's tokens is judged, it is what the command's append expects
// (eventstore.Store.AppendInOrganization): the judgement then saw every
// event the organization had when the event is stored.
func (v *Tokens) OrganizationSequence(org string) uint64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.orgLast[org]
}

func (v *Tokens) refuse(seq uint64, key tokenKey) {
	v.rejected++
	if ent := v.byKey[key]; ent != nil {
		ent.lastSeq = seq
		ent.quarantined = true
	}
}

// indexed is what the indexes hold for a token: its secret and its places.
// known is false for a token they do not hold yet.
type indexed struct {
	known  bool
	secret domain.SecretHash
	places []place
}

// indexedFacts takes from t what reindex will need to move it after an event
// of type typ; places only for the events that can change them.
func indexedFacts(t *domain.Token, typ domain.EventType) indexed {
	f := indexed{known: true, secret: t.SecretHash()}
	switch typ {
	case domain.TokenUpdated, domain.TokenRotated, domain.TokenReuseDetected:
	default:
		f.places = places(t)
	}
	return f
}

// reindex brings every index in line with ent's token, which the indexes knew
// as prev (zero for a new token) before an event of type typ ("" when
// restoring a snapshot: everything). It is the one place indexes change, for
// live events, replay and snapshots alike. Only the events that can move a
// token's secret or places touch those indexes: most events in a long
// history are updates and rotations, and a rebuild is faster for skipping
// the rest.
func (v *Tokens) reindex(ent *entry, prev indexed, typ domain.EventType) {
	next := ent.token
	switch typ {
	case domain.TokenUpdated, domain.TokenReuseDetected:
		return
	case domain.TokenAssigned, domain.TokenUnassigned:
		v.replace(ent, prev.places, places(next))
		return
	}
	if prev.known && prev.secret != next.SecretHash() {
		delete(v.byHash, prev.secret)
		v.retired[prev.secret] = retiredSecret{ent: ent, hash: prev.secret, reason: OutcomeRotated}
	}
	if next.Deleted() {
		delete(v.byHash, next.SecretHash())
		v.retired[next.SecretHash()] = retiredSecret{ent: ent, hash: next.SecretHash(), reason: OutcomeDeleted}
	} else {
		v.byHash[next.SecretHash()] = ent
	}
	if typ != domain.TokenRotated {
		v.replace(ent, prev.places, places(next))
	}
}

func (v *Tokens) advance(seq uint64) {
	if seq <= v.seq {
		return
	}
	v.seq = seq
	if v.wakeAt != 0 && seq >= v.wakeAt {
		close(v.notify)
		v.notify = make(chan struct{})
		v.wakeAt = 0
	}
}

// Sequence is the last stream sequence the view has applied.
func (v *Tokens) Sequence() uint64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.seq
}

// SetFeedFault records that what feeds the view is not to be trusted now, and
// why (the server delivered what the view's consumer did not ask for, say),
// or, with nil, that it is again. The view itself is not changed: it holds
// what it applied before, and its readiness check reports the fault.
func (v *Tokens) SetFeedFault(err error) {
	if err == nil {
		v.feedFault.Store(nil)
		return
	}
	v.feedFault.Store(&err)
}

// FeedFault is the fault SetFeedFault recorded last; nil if none.
func (v *Tokens) FeedFault() error {
	if p := v.feedFault.Load(); p != nil {
		return *p
	}
	return nil
}

// Rejected is the number of stream messages Apply refused.
func (v *Tokens) Rejected() int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.rejected
}

// WaitFor returns once the view has applied stream sequence seq, so a read that
// follows a write sees it. It gives up when ctx ends.
func (v *Tokens) WaitFor(ctx context.Context, seq uint64) error {
	for {
		v.mu.Lock()
		if v.seq >= seq {
			v.mu.Unlock()
			return nil
		}
		if v.wakeAt == 0 || seq < v.wakeAt {
			v.wakeAt = seq
		}
		ch := v.notify
		v.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("view has not reached sequence %d: %w", seq, ctx.Err())
		}
	}
}

// Get returns a copy of a token of org, with the stream sequence of its last
// event (the expected sequence for the next append).
func (v *Tokens) Get(org, id string) (*domain.Token, uint64, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	ent := v.byKey[tokenKey{org, id}]
	if ent == nil {
		return nil, 0, false
	}
	return ent.copyToken(), ent.lastSeq, true
}

// Quarantined reports whether a token of org is quarantined (see Refuse).
func (v *Tokens) Quarantined(org, id string) bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	ent := v.byKey[tokenKey{org, id}]
	return ent != nil && ent.quarantined
}

// Listed is a token with the stream sequence of its last event, and whether
// it is quarantined (see Refuse).
type Listed struct {
	Token       *domain.Token
	Sequence    uint64
	Quarantined bool
}

// List returns copies of org's tokens, oldest first, deleted ones included
// (callers filter by status).
func (v *Tokens) List(org string) []Listed {
	v.mu.RLock()
	out := make([]Listed, 0)
	for k, ent := range v.byKey {
		if k.org == org {
			out = append(out, Listed{Token: ent.copyToken(), Sequence: ent.lastSeq, Quarantined: ent.quarantined})
		}
	}
	v.mu.RUnlock()
	slices.SortFunc(out, func(a, b Listed) int {
		if c := a.Token.CreatedAt().Compare(b.Token.CreatedAt()); c != 0 {
			return c
		}
		return strings.Compare(a.Token.ID(), b.Token.ID())
	})
	return out
}

// Keyed returns what an event written under an idempotency key did, by its
// event id.
func (v *Tokens) Keyed(eventID string) (Applied, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	a, ok := v.keyed[eventID]
	return a, ok
}

// Outcome is the answer to a verification.
type Outcome string

const (
	OutcomeActive    Outcome = "active"
	OutcomeMalformed Outcome = "malformed"
	OutcomeUnknown   Outcome = "unknown"
	OutcomeRotated   Outcome = "rotated"
	OutcomeExpired   Outcome = "expired"
	OutcomeDeleted   Outcome = "deleted"
	// OutcomeQuarantined: the token's history holds a message the ledger could
	// not apply, so the ledger will not vouch for it.
	OutcomeQuarantined Outcome = "quarantined"
)

// Verdict is what Verify found: the outcome and, for every outcome but
// malformed and unknown, a copy of the token, taken under the view's lock and
// held by value so that verification does not allocate.
type Verdict struct {
	Outcome Outcome
	token   domain.Token
	found   bool
	// ent is the token's entry for an active secret, for MarkUsed.
	ent *entry
}

// Token returns the token the secret belongs to, or nil (malformed, unknown).
func (d Verdict) Token() *domain.Token {
	if !d.found {
		return nil
	}
	t := d.token
	return &t
}

// TokenKey names the token the secret belongs to, without copying it: its
// organization and id, or "" (malformed, unknown).
func (d Verdict) TokenKey() (org, id string) {
	if !d.found {
		return "", ""
	}
	return d.token.OrganizationID(), d.token.ID()
}

// Reason is a sentence for a person.
func (d Verdict) Reason() string {
	switch d.Outcome {
	case OutcomeActive:
		return "token is active"
	case OutcomeMalformed:
		return "not a TokenLedger token: wrong prefix, length or checksum"
	case OutcomeUnknown:
		return "no token has this secret"
	case OutcomeRotated:
		return "this secret was rotated away; the token has a newer secret"
	case OutcomeExpired:
		return "token expired at " + d.token.ExpiresAt().Format(time.RFC3339)
	case OutcomeDeleted:
		return "token was deleted"
	case OutcomeQuarantined:
		return "the token's history holds an event the ledger could not apply; it is not trusted until an operator investigates"
	}
	return string(d.Outcome)
}

// Verify looks a secret up by its hash. A secret that does not authenticate
// takes as long whatever the reason (malformed, unknown, expired, rotated
// away, deleted), so timing tells a caller no more than the answer does: it
// is hashed before its format is judged, both indexes are probed, the stored
// hash is compared in constant time, and a token is copied, on every path.
// The format verdict still comes first in the answer: a malformed string is
// never answered from an index, even when its first SecretLen bytes are
// some token's secret.
func (v *Tokens) Verify(secret string, now time.Time) Verdict {
	// At most SecretLen bytes: longer strings are malformed anyway, and
	// hashing a stack copy of them does not allocate.
	h := domain.Hash(secret[:min(len(secret), domain.SecretLen)])
	_, malformed := domain.CheckSecretFormat(secret)
	v.mu.RLock()
	live := v.byHash[h]
	old, isOld := v.retired[h]
	cand, stored, outcome := noEntry, domain.SecretHash{}, OutcomeUnknown
	switch {
	case malformed != nil:
	case live != nil:
		cand, stored, outcome = live, live.token.SecretHash(), OutcomeActive
	case isOld:
		cand, stored, outcome = old.ent, old.hash, old.reason
	}
	d := Verdict{token: *cand.token}
	quarantined := cand.quarantined
	v.mu.RUnlock()
	// On copies, past the lock: nothing here reads the view.
	matches := subtle.ConstantTimeCompare(stored[:], h[:]) == 1
	expired := d.token.Status(now) == domain.StatusExpired
	switch {
	case malformed != nil:
		d.Outcome = OutcomeMalformed
	case !matches:
		d.Outcome = OutcomeUnknown
	case outcome != OutcomeActive:
		d.Outcome, d.found = outcome, true
	case quarantined:
		d.Outcome, d.found = OutcomeQuarantined, true
	case expired:
		d.Outcome, d.found = OutcomeExpired, true
	default:
		d.Outcome, d.found, d.ent = OutcomeActive, true, cand
	}
	return d
}

// LastUsedEvery is how stale a token's last use may get: MarkUsed moves it
// only when the one it holds is at least this old, so a token in constant
// use costs one atomic store every LastUsedEvery, not one per request.
const LastUsedEvery = 30 * time.Second

// MarkUsed records that the token of an active verdict authenticated a
// request at now. It takes no lock and does not allocate; it never moves a
// last use back.
func (v *Tokens) MarkUsed(d Verdict, now time.Time) {
	if d.ent == nil {
		return
	}
	at := now.Unix()
	last := d.ent.lastUsed.Load()
	if at-last < int64(LastUsedEvery/time.Second) {
		return
	}
	if d.ent.lastUsed.CompareAndSwap(last, at) {
		v.uses.Add(1)
		if f := v.onUse.Load(); f != nil {
			(*f)(d.token.OrganizationID(), d.token.ID(), time.Unix(at, 0))
		}
	}
}

// OnUse has f told of every last use MarkUsed moves: at most once every
// LastUsedEvery per token, so that other instances of the ledger can be
// told too (shared.ShareLastUsed). f runs on the request's path and must
// not block. A last use taken in with MergeLastUsed is not passed on.
func (v *Tokens) OnUse(f func(org, id string, at time.Time)) {
	if f == nil {
		v.onUse.Store(nil)
		return
	}
	v.onUse.Store(&f)
}

// MergeLastUsed takes in a last use of token (org, id) recorded elsewhere
// (another instance of the ledger): the token's last use becomes the later
// of the two, to the second; it never moves back. It reports false when the
// view holds no such token (yet: its creation may still be on its way).
func (v *Tokens) MergeLastUsed(org, id string, at time.Time) bool {
	v.mu.RLock()
	ent := v.byKey[tokenKey{org, id}]
	v.mu.RUnlock()
	if ent == nil {
		return false
	}
	u := at.Unix()
	for {
		last := ent.lastUsed.Load()
		if u <= last {
			return true
		}
		if ent.lastUsed.CompareAndSwap(last, u) {
			v.uses.Add(1)
			return true
		}
	}
}
