package app

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/projections"
)

// GetToken returns one token of the caller's organization and the stream
// sequence of its last event. minSeq, when set, makes the read wait until the
// view has reached it.
func (l *Ledger) GetToken(ctx context.Context, c Caller, id string, minSeq uint64) (*domain.Token, uint64, error) {
	if err := l.readLatest(ctx, minSeq); err != nil {
		return nil, 0, err
	}
	return l.getReadable(c, id)
}

// getReadable is get, for a caller allowed to read the token.
func (l *Ledger) getReadable(c Caller, id string) (*domain.Token, uint64, error) {
	tok, last, err := l.get(c, id)
	if err != nil {
		return nil, 0, err
	}
	if err := domain.Authorize(c.Token, domain.OpRead, tok, nil); err != nil {
		return nil, 0, err
	}
	return tok.ShownTo(c.Token), last, nil
}

// ListTokens returns the caller's organization's tokens, oldest first, and the
// stream sequence the list reflects (at least).
func (l *Ledger) ListTokens(ctx context.Context, c Caller, minSeq uint64) ([]projections.Listed, uint64, error) {
	return l.FindTokens(ctx, c, TokenFilter{}, minSeq)
}

// TokenFilter narrows a list of tokens. A nil field does not filter; the
// fields that are set must all match. Values are taken as a caller typed
// them, and each bad one is reported under its field's name (the query
// parameter's).
type TokenFilter struct {
	// Scope: organization, workspace or deployment, in any case.
	Scope *string
	// WorkspaceID: the tokens that hold a role in the workspace: its
	// workspace tokens, the deployment tokens of its deployments, and the
	// organization tokens assigned to it.
	WorkspaceID *string
	// DeploymentID: the deployment tokens of the deployment.
	DeploymentID *string
	// Role: the token's role; with WorkspaceID, the role it holds in that
	// workspace (an organization token's assigned workspace role).
	Role *string
	// Status: active, expired or deleted, judged at the ledger's clock.
	Status *string
}

// tokenMatch is a checked TokenFilter; zero fields match everything.
type tokenMatch struct {
	scope       domain.Scope
	workspaceID string
	deployment  string
	role        domain.Role
	status      domain.Status
}

// idRule is the rule of domain.ValidID, as the domain words it.
const idRule = "must be 1-64 characters of letters, digits, '-' or '_', starting with a letter or digit"

func (f TokenFilter) check() (tokenMatch, error) {
	var m tokenMatch
	var problems []domain.FieldError
	bad := func(field, rule string) { problems = append(problems, domain.FieldError{Field: field, Rule: rule}) }
	if f.Scope != nil {
		s, err := domain.ParseScope(*f.Scope)
		if err != nil {
			bad("scope", err.Error())
		}
		m.scope = s
	}
	if f.WorkspaceID != nil {
		if !domain.ValidID(*f.WorkspaceID) {
			bad("workspace_id", idRule)
		}
		m.workspaceID = *f.WorkspaceID
	}
	if f.DeploymentID != nil {
		if !domain.ValidID(*f.DeploymentID) {
			bad("deployment_id", idRule)
		}
		m.deployment = *f.DeploymentID
	}
	if f.Role != nil {
		m.role = domain.Role(strings.ToUpper(strings.TrimSpace(*f.Role)))
		if !m.role.Known() {
			bad("role", fmt.Sprintf("unknown role %q", clip(*f.Role)))
		}
	}
	if f.Status != nil {
		m.status = domain.Status(strings.ToLower(strings.TrimSpace(*f.Status)))
		switch m.status {
		case domain.StatusActive, domain.StatusExpired, domain.StatusDeleted:
		default:
			bad("status", "must be one of active, expired, deleted")
		}
	}
	if len(problems) > 0 {
		return tokenMatch{}, &domain.ValidationError{Problems: problems}
	}
	return m, nil
}

func (m tokenMatch) matches(t *domain.Token, now time.Time) bool {
	if m.scope != "" && t.Scope() != m.scope {
		return false
	}
	if m.deployment != "" && (t.Scope() != domain.ScopeDeployment || t.DeploymentID() != m.deployment) {
		return false
	}
	role := t.Role()
	if m.workspaceID != "" {
		r, ok := roleInWorkspace(t, m.workspaceID)
		if !ok {
			return false
		}
		role = r
	}
	if m.role != "" && role != m.role {
		return false
	}
	return m.status == "" || t.Status(now) == m.status
}

// roleInWorkspace returns the role t holds in workspace ws, if any: a
// workspace token's role in its workspace, a deployment token's role in its
// deployment's workspace, an organization token's assigned role. It says
// nothing about whether t can act now (see its status).
func roleInWorkspace(t *domain.Token, ws string) (domain.Role, bool) {
	switch t.Scope() {
	case domain.ScopeWorkspace, domain.ScopeDeployment:
		return t.Role(), t.WorkspaceID() == ws
	}
	return t.WorkspaceRole(ws)
}

// FindTokens returns the caller's organization's tokens that match f, oldest
// first, deleted ones included unless f says otherwise, and the stream
// sequence the list reflects (at least). A bad filter value is a
// ValidationError naming its field.
func (l *Ledger) FindTokens(ctx context.Context, c Caller, f TokenFilter, minSeq uint64) ([]projections.Listed, uint64, error) {
	m, err := f.check()
	if err != nil {
		return nil, 0, err
	}
	if err := l.readLatest(ctx, minSeq); err != nil {
		return nil, 0, err
	}
	seq := l.view.Sequence()
	all := l.view.List(c.org())
	now := l.now()
	out := all[:0]
	for _, t := range all {
		// Filters match what the caller may see: a workspace it may not
		// read does not place a token in it.
		t.Token = t.Token.ShownTo(c.Token)
		if domain.CanRead(c.Token, t.Token) && m.matches(t.Token, now) {
			out = append(out, t)
		}
	}
	return out, seq, nil
}

// Holdings returns the tokens that can act now in one workspace or in one
// deployment of the caller's organization (exactly one of workspaceID and
// deploymentID is given), with the role each holds there and how; and the
// stream sequence the answer reflects (at least). See
// projections.Tokens.InWorkspace and InDeployment.
func (l *Ledger) Holdings(ctx context.Context, c Caller, workspaceID, deploymentID *string, minSeq uint64) ([]projections.Holding, uint64, error) {
	var problems []domain.FieldError
	if (workspaceID == nil) == (deploymentID == nil) {
		const rule = "give exactly one of workspace_id and deployment_id"
		problems = append(problems, domain.FieldError{Field: "workspace_id", Rule: rule}, domain.FieldError{Field: "deployment_id", Rule: rule})
	}
	if workspaceID != nil && !domain.ValidID(*workspaceID) {
		problems = append(problems, domain.FieldError{Field: "workspace_id", Rule: idRule})
	}
	if deploymentID != nil && !domain.ValidID(*deploymentID) {
		problems = append(problems, domain.FieldError{Field: "deployment_id", Rule: idRule})
	}
	if len(problems) > 0 {
		return nil, 0, &domain.ValidationError{Problems: problems}
	}
	// Who acts in a workspace is that workspace's business: a caller that
	// does not read it gets the same answer as for a workspace nobody acts
	// in, so the answer tells it nothing.
	if workspaceID != nil && !domain.ReadsWorkspace(c.Token, *workspaceID) {
		return nil, l.view.Sequence(), nil
	}
	if err := l.readLatest(ctx, minSeq); err != nil {
		return nil, 0, err
	}
	seq := l.view.Sequence()
	var all []projections.Holding
	if workspaceID != nil {
		all = l.view.InWorkspace(c.org(), *workspaceID, l.now())
	} else {
		all = l.view.InDeployment(c.org(), *deploymentID, l.now())
	}
	out := all[:0]
	for _, h := range all {
		if domain.CanRead(c.Token, h.Token) {
			out = append(out, h)
		}
	}
	return out, seq, nil
}

// TokenHistory returns a token's events as stored, oldest first. It reads the
// stream, not the view, so it is complete the moment a command has answered.
// Events carry the secret's hash: adapters must not show it.
func (l *Ledger) TokenHistory(ctx context.Context, c Caller, id string) ([]eventstore.Recorded, error) {
	if err := l.mayReadHistory(c, id); err != nil {
		return nil, err
	}
	recs, err := l.history(ctx, c, id)
	if err != nil {
		return nil, err
	}
	shown := recs[:0]
	for _, r := range recs {
		if r.Event.ShownTo(c.Token) {
			shown = append(shown, r)
		}
	}
	return shown, nil
}

// TokenAt returns a token as it was at time at: its events that happened up
// to then folded through the domain, and the stream sequence of the last of
// them. Events are taken in stream order until the first one after at. A
// token created after at is a NotFoundError on field "at".
func (l *Ledger) TokenAt(ctx context.Context, c Caller, id string, at time.Time) (*domain.Token, uint64, error) {
	if err := l.mayReadHistory(c, id); err != nil {
		return nil, 0, err
	}
	recs, err := l.history(ctx, c, id)
	if err != nil {
		return nil, 0, err
	}
	events := make([]domain.Event, 0, len(recs))
	for _, r := range recs {
		if r.Event.OccurredAt.After(at) {
			break
		}
		events = append(events, r.Event)
	}
	if len(events) == 0 {
		return nil, 0, &domain.NotFoundError{Field: "at", Rule: fmt.Sprintf("token %s did not exist yet at %s; it was created at %s",
			id, at.UTC().Format(time.RFC3339Nano), recs[0].Event.OccurredAt.UTC().Format(time.RFC3339Nano))}
	}
	tok, err := domain.Replay(events)
	if err != nil {
		return nil, 0, fmt.Errorf("token %s at %s: %w", id, at.Format(time.RFC3339Nano), err)
	}
	return tok.ShownTo(c.Token), recs[len(events)-1].Sequence, nil
}

// mayReadHistory refuses a caller who may not read token id as the view
// knows it. A token the view does not know yet (just created, the view
// behind) is left to history, which reads the stream: reading it is then
// allowed only to those who read every token of the organization.
func (l *Ledger) mayReadHistory(c Caller, id string) error {
	if tok, _, ok := l.view.Get(c.org(), id); ok {
		return domain.Authorize(c.Token, domain.OpRead, tok, nil)
	}
	if c.Token.Scope() != domain.ScopeOrganization {
		return &domain.NotFoundError{Field: "token_id", Rule: fmt.Sprintf("no token %q in organization %s", clip(id), c.org())}
	}
	return nil
}

// history loads a token of the caller's organization from the stream.
func (l *Ledger) history(ctx context.Context, c Caller, id string) ([]eventstore.Recorded, error) {
	if err := l.reachable(); err != nil {
		return nil, err
	}
	recs, err := l.store.Load(ctx, c.org(), id)
	if err != nil {
		// A message in the token's history that is not a valid event (only a
		// writer bypassing the ledger can store one) makes the load fail for
		// good; the view has quarantined the token for it.
		for _, t := range l.view.List(c.org()) {
			if t.Token.ID() == id && t.Quarantined {
				return nil, &domain.StateError{Field: "token_id", Rule: "the token's history holds a message that is not a valid event, so it cannot be shown; the token is quarantined"}
			}
		}
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if len(recs) == 0 {
		return nil, &domain.NotFoundError{Field: "token_id", Rule: fmt.Sprintf("no token %q in organization %s", clip(id), c.org())}
	}
	return recs, nil
}

// readLatest makes a read of the view see every command acknowledged before
// it began, through any ledger: a token created or changed through another
// ledger a moment ago is shown as it is now, as one ledger would show it.
// The wait is for the stream's head, shared by concurrent reads (see
// headSince), and best effort: the caller was authenticated on a view
// within the staleness bound, so a head that cannot be had now (NATS
// briefly away) leaves the answer to that view. With minSeq, it is
// waitForRead.
func (l *Ledger) readLatest(ctx context.Context, minSeq uint64) error {
	if minSeq != 0 {
		return l.waitForRead(ctx, minSeq)
	}
	if l.fresh.bound > 0 {
		_ = l.reachHead(l.fresh.bound / 2)
	}
	return ctx.Err()
}

// waitForRead makes a read wait for a sequence the caller was given. A
// sequence the stream has not reached is the caller's mistake, not a reason to
// wait.
func (l *Ledger) waitForRead(ctx context.Context, minSeq uint64) error {
	if minSeq == 0 || l.view.Sequence() >= minSeq {
		return nil
	}
	if err := l.reachable(); err != nil {
		return err
	}
	if l.fresh.bound > 0 {
		// A ledger within its staleness bound reaches any sequence the
		// stream has within the bound; one that is not says so at once.
		if err := l.Staleness(); err != nil {
			return err
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, l.fresh.bound)
		defer cancel()
	}
	last, err := l.store.LastSequence(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if minSeq > last {
		return domain.Invalid("min_sequence", fmt.Sprintf("beyond the stream's last sequence (%d)", last))
	}
	return l.waitFor(ctx, minSeq)
}
