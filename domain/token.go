package domain

import (
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Limits the commands enforce.
const (
	MaxNameLen        = 100
	MaxDescriptionLen = 1000
	MinExpirationDays = 1
	MaxExpirationDays = 365
)

// Status is a token's standing at a given moment.
type Status string

const (
	StatusActive  Status = "active"
	StatusExpired Status = "expired"
	StatusDeleted Status = "deleted"
)

// Env is what a command takes from outside the domain: the time, a source of
// randomness for ids and secrets, and who is acting. EventID and IdempotencyKey
// are set for a command the caller may retry: the same key gives the same event
// id, which the store uses to drop the retry.
type Env struct {
	Now            time.Time
	Rand           io.Reader
	Actor          Actor
	EventID        string
	IdempotencyKey string
	// RequestHash identifies the request's parameters, so a key reused with
	// other parameters is told apart from a retry.
	RequestHash string
}

// Token is the aggregate: one API token and everything that happened to it.
// State changes only in apply, so replaying the events gives the same token.
type Token struct {
	id             string
	organizationID string
	scope          Scope
	workspaceID    string
	deploymentID   string
	name           string
	description    string
	role           Role
	// workspaceRoles is sorted by workspace and never changed in place (apply
	// makes a new one), so clones can share it. A slice, not a map: a view
	// holds hundreds of thousands of tokens, and this is smaller and cheaper
	// for the garbage collector to walk.
	workspaceRoles []WorkspaceRole
	expirationDays int
	expiresAt      time.Time // zero: never expires
	createdAt      time.Time
	updatedAt      time.Time
	rotatedAt      time.Time
	deletedAt      time.Time
	version        uint64
	// changedVersion is the version of the last event that changed the
	// token (any but TokenReuseDetected); see UnchangedSince.
	changedVersion uint64
	secretHash     SecretHash
	fingerprint    string
	// chainHead is the Hash of the token's last event: the next event's
	// PrevHash.
	chainHead EventHash
	// lastUsed is when the token last authenticated a request, in Unix
	// seconds (0: not known). No event records it, so Apply never sets it:
	// the token view keeps it beside the token and stamps it on the copies
	// it hands out (see SetLastUsedAt).
	lastUsed int64
}

func (t *Token) ID() string             { return t.id }
func (t *Token) OrganizationID() string { return t.organizationID }
func (t *Token) Scope() Scope           { return t.scope }
func (t *Token) WorkspaceID() string    { return t.workspaceID }
func (t *Token) DeploymentID() string   { return t.deploymentID }
func (t *Token) Name() string           { return t.name }
func (t *Token) Description() string    { return t.description }
func (t *Token) Role() Role             { return t.role }
func (t *Token) ExpirationDays() int    { return t.expirationDays }
func (t *Token) ExpiresAt() time.Time   { return t.expiresAt }
func (t *Token) CreatedAt() time.Time   { return t.createdAt }
func (t *Token) UpdatedAt() time.Time   { return t.updatedAt }
func (t *Token) RotatedAt() time.Time   { return t.rotatedAt }
func (t *Token) DeletedAt() time.Time   { return t.deletedAt }
func (t *Token) Version() uint64        { return t.version }
func (t *Token) SecretHash() SecretHash { return t.secretHash }
func (t *Token) Fingerprint() string    { return t.fingerprint }
func (t *Token) Deleted() bool          { return !t.deletedAt.IsZero() }

// LastUsedAt is when the token last authenticated a request, to the second;
// zero when that is not known.
func (t *Token) LastUsedAt() time.Time {
	if t.lastUsed == 0 {
		return time.Time{}
	}
	return time.Unix(t.lastUsed, 0).UTC()
}

// SetLastUsedAt stamps a copy of a token with when it was last used (zero:
// not known). It is for the token view, which tracks uses outside the
// token's history; it changes nothing a command or an event depends on.
func (t *Token) SetLastUsedAt(at time.Time) {
	if at.IsZero() {
		t.lastUsed = 0
		return
	}
	t.lastUsed = at.Unix()
}
func (t *Token) WorkspaceRoles() map[string]Role {
	if len(t.workspaceRoles) == 0 {
		return nil
	}
	m := make(map[string]Role, len(t.workspaceRoles))
	for _, wr := range t.workspaceRoles {
		m[wr.WorkspaceID] = wr.Role
	}
	return m
}

// WorkspaceRole is an organization token's role in one workspace.
type WorkspaceRole struct {
	WorkspaceID string
	Role        Role
}

// EachWorkspaceRole calls f for each workspace the token holds a role in, in
// workspace order, without copying.
func (t *Token) EachWorkspaceRole(f func(workspaceID string, role Role)) {
	for _, wr := range t.workspaceRoles {
		f(wr.WorkspaceID, wr.Role)
	}
}

// WorkspaceRole returns the role an organization token holds in a workspace.
func (t *Token) WorkspaceRole(workspaceID string) (Role, bool) {
	i, ok := t.findWorkspace(workspaceID)
	if !ok {
		return "", false
	}
	return t.workspaceRoles[i].Role, true
}

func (t *Token) findWorkspace(workspaceID string) (int, bool) {
	return slices.BinarySearchFunc(t.workspaceRoles, workspaceID, func(wr WorkspaceRole, id string) int {
		return strings.Compare(wr.WorkspaceID, id)
	})
}

// Status judges the token at now: expiry needs no event, it is read off the clock.
func (t *Token) Status(now time.Time) Status {
	switch {
	case t.Deleted():
		return StatusDeleted
	case !t.expiresAt.IsZero() && !now.Before(t.expiresAt):
		return StatusExpired
	}
	return StatusActive
}

// Clone returns a copy a command can run on without touching the original.
// The workspace-role slice is shared: it is never changed in place (apply
// makes a new one), so sharing it is safe and keeps Clone cheap.
func (t *Token) Clone() *Token {
	c := *t
	return &c
}

// CreateToken is the create command. Strings are taken as the caller typed
// them: Create trims the name, scope and role (not the description, whose
// spacing may be deliberate) and checks everything; ids must already be clean.
type CreateToken struct {
	OrganizationID string
	Scope          string
	WorkspaceID    string
	DeploymentID   string
	Name           string
	Description    string
	Role           string // empty: the scope's least-privileged role
	ExpirationDays *int   // nil: never expires
}

// Create checks every field, issues a secret and records TokenCreated. All
// broken rules are reported together.
func Create(cmd CreateToken, env Env) (*Token, Event, Secret, error) {
	var p problems
	if !ValidID(cmd.OrganizationID) {
		p.add("organization_id", idRule)
	}
	scope, err := ParseScope(cmd.Scope)
	if err != nil {
		p.add("scope", err.Error())
	}
	name, rule := checkName(cmd.Name)
	if rule != "" {
		p.add("name", rule)
	}
	if rule := checkDescription(cmd.Description); rule != "" {
		p.add("description", rule)
	}
	role := Role(strings.ToUpper(strings.TrimSpace(cmd.Role)))
	if role == "" && scope != "" {
		role = defaultRole[scope]
	}
	if scope != "" {
		if rule := checkRole("role", role, scope); rule != "" {
			p.add("role", rule)
		}
	} else if role != "" && !role.Known() {
		p.add("role", "unknown role "+quote(string(role)))
	}
	switch scope {
	case ScopeOrganization:
		if cmd.WorkspaceID != "" {
			p.add("workspace_id", "an organization token belongs to no workspace; assign it to workspaces after creating it")
		}
		if cmd.DeploymentID != "" {
			p.add("deployment_id", "only deployment tokens belong to a deployment")
		}
	case ScopeWorkspace:
		if !ValidID(cmd.WorkspaceID) {
			p.add("workspace_id", "required for a workspace token; "+idRule)
		}
		if cmd.DeploymentID != "" {
			p.add("deployment_id", "only deployment tokens belong to a deployment")
		}
	case ScopeDeployment:
		if !ValidID(cmd.WorkspaceID) {
			p.add("workspace_id", "required for a deployment token (the deployment's workspace); "+idRule)
		}
		if !ValidID(cmd.DeploymentID) {
			p.add("deployment_id", "required for a deployment token; "+idRule)
		}
	}
	days := 0
	if cmd.ExpirationDays != nil {
		days = *cmd.ExpirationDays
		if days < MinExpirationDays || days > MaxExpirationDays {
			p.add("expiration_days", fmt.Sprintf("must be a whole number of days from %d to %d, or omitted for a token that never expires", MinExpirationDays, MaxExpirationDays))
		}
	}
	if err := p.err(); err != nil {
		return nil, Event{}, Secret{}, err
	}

	id, err := newTokenID(env.Rand)
	if err != nil {
		return nil, Event{}, Secret{}, err
	}
	secret, err := NewSecret(scope, env.Rand)
	if err != nil {
		return nil, Event{}, Secret{}, err
	}
	data := CreatedData{
		Scope:          scope,
		Name:           name,
		Description:    cmd.Description,
		Role:           role,
		ExpirationDays: days,
		SecretHash:     Hash(secret.Reveal()),
		Fingerprint:    Fingerprint(secret.Reveal()),
	}
	if scope != ScopeOrganization {
		data.WorkspaceID = cmd.WorkspaceID
	}
	if scope == ScopeDeployment {
		data.DeploymentID = cmd.DeploymentID
	}
	if days > 0 {
		exp := auditTime(env.Now.Add(time.Duration(days) * 24 * time.Hour))
		data.ExpiresAt = &exp
	}
	t := &Token{id: id, organizationID: cmd.OrganizationID}
	e, err := t.record(env, data)
	if err != nil {
		return nil, Event{}, Secret{}, err
	}
	return t, e, secret, nil
}

// UpdateToken changes name, description and role; a nil field stays as it is.
type UpdateToken struct {
	Name        *string
	Description *string
	Role        *string
}

// Update records TokenUpdated with the fields that change. changed is false,
// and no event is made, when every given value equals the current one.
func (t *Token) Update(cmd UpdateToken, env Env) (e Event, changed bool, err error) {
	if err := t.checkLive(); err != nil {
		return Event{}, false, err
	}
	if cmd.Name == nil && cmd.Description == nil && cmd.Role == nil {
		return Event{}, false, Invalid("name", "give at least one of name, description or role to change")
	}
	var p problems
	var data UpdatedData
	if cmd.Name != nil {
		name, rule := checkName(*cmd.Name)
		if rule != "" {
			p.add("name", rule)
		} else if name != t.name {
			prev := t.name
			data.Name, data.PreviousName = &name, &prev
		}
	}
	if cmd.Description != nil {
		if rule := checkDescription(*cmd.Description); rule != "" {
			p.add("description", rule)
		} else if *cmd.Description != t.description {
			desc, prev := *cmd.Description, t.description
			data.Description, data.PreviousDescription = &desc, &prev
		}
	}
	if cmd.Role != nil {
		role := Role(strings.ToUpper(strings.TrimSpace(*cmd.Role)))
		if rule := checkRole("role", role, t.scope); rule != "" {
			p.add("role", rule)
		} else if role != t.role {
			data.Role, data.PreviousRole = role, t.role
		}
	}
	if err := p.err(); err != nil {
		return Event{}, false, err
	}
	if data.Name == nil && data.Description == nil && data.Role == "" {
		return Event{}, false, nil
	}
	e, err = t.record(env, data)
	return e, err == nil, err
}

// Rotate issues a new secret; the old one stops working the moment the event is
// stored. Name, description and roles are kept, and an expiring token is renewed
// for its original number of days.
func (t *Token) Rotate(env Env) (Event, Secret, error) {
	if err := t.checkLive(); err != nil {
		return Event{}, Secret{}, err
	}
	secret, err := NewSecret(t.scope, env.Rand)
	if err != nil {
		return Event{}, Secret{}, err
	}
	data := RotatedData{
		SecretHash:          Hash(secret.Reveal()),
		Fingerprint:         Fingerprint(secret.Reveal()),
		PreviousSecretHash:  t.secretHash,
		PreviousFingerprint: t.fingerprint,
	}
	if t.expirationDays > 0 {
		exp := auditTime(env.Now.Add(time.Duration(t.expirationDays) * 24 * time.Hour))
		data.ExpiresAt = &exp
	}
	e, err := t.record(env, data)
	if err != nil {
		return Event{}, Secret{}, err
	}
	return e, secret, nil
}

// Assign gives an organization token a workspace role in a workspace, or changes
// the role it has there. changed is false when it already holds that role.
func (t *Token) Assign(workspaceID, role string, env Env) (e Event, changed bool, err error) {
	if err := t.checkLive(); err != nil {
		return Event{}, false, err
	}
	var p problems
	if t.scope != ScopeOrganization {
		p.add("token_id", fmt.Sprintf("only organization tokens can be assigned to workspaces; this is a %s token", t.scope))
	}
	if !ValidID(workspaceID) {
		p.add("workspace_id", idRule)
	}
	r := Role(strings.ToUpper(strings.TrimSpace(role)))
	if rule := checkRole("role", r, ScopeWorkspace); rule != "" {
		p.add("role", rule)
	}
	if err := p.err(); err != nil {
		return Event{}, false, err
	}
	prev, _ := t.WorkspaceRole(workspaceID)
	if prev == r {
		return Event{}, false, nil
	}
	e, err = t.record(env, AssignedData{WorkspaceID: workspaceID, Role: r, PreviousRole: prev})
	return e, err == nil, err
}

// Unassign removes an organization token's role in a workspace.
func (t *Token) Unassign(workspaceID string, env Env) (Event, error) {
	if err := t.checkLive(); err != nil {
		return Event{}, err
	}
	if t.scope != ScopeOrganization {
		return Event{}, Invalid("token_id", fmt.Sprintf("only organization tokens are assigned to workspaces; this is a %s token", t.scope))
	}
	if !ValidID(workspaceID) {
		return Event{}, Invalid("workspace_id", idRule)
	}
	prev, ok := t.WorkspaceRole(workspaceID)
	if !ok {
		return Event{}, &StateError{Field: "workspace_id", Rule: fmt.Sprintf("token is not assigned to workspace %s", workspaceID)}
	}
	return t.record(env, UnassignedData{WorkspaceID: workspaceID, PreviousRole: prev})
}

// Delete ends the token. It accepts no command afterwards; its history stays.
func (t *Token) Delete(env Env) (Event, error) {
	if err := t.checkLive(); err != nil {
		return Event{}, err
	}
	return t.record(env, DeletedData{})
}

// RecordReuse records TokenReuseDetected: a secret the token had before a
// rotation, whose fingerprint is given, was presented again and refused. It
// is not a command but a report of what the ledger saw, so it is recorded
// for a deleted token too; it changes nothing but the token's version and
// hash chain. env.Actor is the request the secret came in.
func (t *Token) RecordReuse(fingerprint string, env Env) (Event, error) {
	return t.RecordReuses(fingerprint, 1, env)
}

// RecordReuses records one TokenReuseDetected standing for tries
// presentations of a rotated-away secret (see ReuseDetectedData.Count).
// env.Actor is the request of one of them.
func (t *Token) RecordReuses(fingerprint string, tries uint64, env Env) (Event, error) {
	if fingerprint == "" {
		return Event{}, Invalid("fingerprint", "required: the fingerprint of the secret that was presented")
	}
	if tries == 0 {
		return Event{}, Invalid("count", "at least one try")
	}
	d := ReuseDetectedData{Fingerprint: fingerprint}
	if tries > 1 {
		d.Count = tries
	}
	return t.record(env, d)
}

// ChangedVersion is the version of the token's last event that changed it:
// every event but TokenReuseDetected, which reports on the token without
// changing it.
func (t *Token) ChangedVersion() uint64 { return t.changedVersion }

// UnchangedSince reports whether the token is as it was at version v: v is
// one of its versions, and nothing but TokenReuseDetected came after it. A
// conditional command (If-Match) asks this rather than for equal versions,
// so that someone trying an old secret cannot make it fail; the command's
// event is still appended on the token's real head.
func (t *Token) UnchangedSince(v uint64) bool {
	return v >= t.changedVersion && v <= t.version && v != 0
}

func (t *Token) checkLive() error {
	if t.Deleted() {
		return ErrDeleted
	}
	return nil
}

// record turns data into the token's next event and applies it.
func (t *Token) record(env Env, data EventData) (Event, error) {
	id := env.EventID
	if id == "" {
		var err error
		if id, err = newUUID(env.Rand); err != nil {
			return Event{}, err
		}
	}
	e := Event{
		ID:             id,
		Type:           data.eventType(),
		TokenID:        t.id,
		OrganizationID: t.organizationID,
		TokenName:      t.name,
		Scope:          t.scope,
		WorkspaceID:    t.workspaceID,
		DeploymentID:   t.deploymentID,
		Version:        t.version + 1,
		OccurredAt:     auditTime(env.Now),
		Actor:          env.Actor,
		IdempotencyKey: env.IdempotencyKey,
		RequestHash:    env.RequestHash,
		Data:           data,
		PrevHash:       t.chainHead,
	}
	switch d := data.(type) {
	case CreatedData:
		e.TokenName, e.Scope, e.WorkspaceID, e.DeploymentID = d.Name, d.Scope, d.WorkspaceID, d.DeploymentID
	case UpdatedData:
		if d.Name != nil {
			e.TokenName = *d.Name
		}
	}
	e.Hash = e.Record().chainSum()
	if err := t.Apply(e); err != nil {
		return Event{}, err
	}
	return e, nil
}

// Replay rebuilds a token from its history, oldest event first. This, not
// Create, is how a stored token comes back to life.
func Replay(events []Event) (*Token, error) {
	if len(events) == 0 {
		return nil, ErrNotFound
	}
	t := &Token{id: events[0].TokenID, organizationID: events[0].OrganizationID}
	for _, e := range events {
		if err := t.Apply(e); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// NewFromCreated starts a token from its TokenCreated event. Projections use it
// when they meet a token's first event; Apply does the rest.
func NewFromCreated(e Event) (*Token, error) {
	t := &Token{id: e.TokenID, organizationID: e.OrganizationID}
	return t, t.Apply(e)
}

// Apply is the one place a token's state changes, for live commands and for
// replay alike. It refuses an event that does not continue this token's history.
func (t *Token) Apply(e Event) error {
	if e.TokenID != t.id || e.OrganizationID != t.organizationID {
		return fmt.Errorf("apply %s: event for token %s/%s applied to %s/%s", e.Type, e.OrganizationID, e.TokenID, t.organizationID, t.id)
	}
	if e.Version != t.version+1 {
		return fmt.Errorf("apply %s to token %s: version %d does not follow %d", e.Type, t.id, e.Version, t.version)
	}
	if _, created := e.Data.(CreatedData); created != (t.version == 0) {
		return fmt.Errorf("apply %s to token %s: a token's history starts with exactly one TokenCreated", e.Type, t.id)
	}
	if e.PrevHash != t.chainHead {
		return fmt.Errorf("apply %s to token %s: prev_hash %s breaks the token's hash chain (its last event's hash is %s)", e.Type, t.id, e.PrevHash, t.chainHead)
	}
	switch d := e.Data.(type) {
	case CreatedData:
		t.scope = d.Scope
		t.workspaceID = d.WorkspaceID
		t.deploymentID = d.DeploymentID
		t.name = d.Name
		t.description = d.Description
		t.role = d.Role
		t.expirationDays = d.ExpirationDays
		if d.ExpiresAt != nil {
			t.expiresAt = *d.ExpiresAt
		}
		t.secretHash = d.SecretHash
		t.fingerprint = d.Fingerprint
		t.createdAt = e.OccurredAt
	case UpdatedData:
		if d.Name != nil {
			t.name = *d.Name
		}
		if d.Description != nil {
			t.description = *d.Description
		}
		if d.Role != "" {
			t.role = d.Role
		}
	case RotatedData:
		t.secretHash = d.SecretHash
		t.fingerprint = d.Fingerprint
		t.rotatedAt = e.OccurredAt
		if d.ExpiresAt != nil {
			t.expiresAt = *d.ExpiresAt
		}
	case AssignedData:
		roles := slices.Clone(t.workspaceRoles)
		if i, ok := t.findWorkspace(d.WorkspaceID); ok {
			roles[i].Role = d.Role
		} else {
			roles = slices.Insert(roles, i, WorkspaceRole{d.WorkspaceID, d.Role})
		}
		t.workspaceRoles = roles
	case UnassignedData:
		if i, ok := t.findWorkspace(d.WorkspaceID); ok {
			t.workspaceRoles = slices.Delete(slices.Clone(t.workspaceRoles), i, i+1)
		}
	case DeletedData:
		t.deletedAt = e.OccurredAt
	case ReuseDetectedData:
		// A report about the token, not a change to it (see below).
	default:
		return fmt.Errorf("apply: unknown event data %T", e.Data)
	}
	t.version = e.Version
	if _, report := e.Data.(ReuseDetectedData); !report {
		// updated_at says when the token last changed; someone trying an old
		// secret changes nothing about it.
		t.updatedAt = e.OccurredAt
		t.changedVersion = e.Version
	}
	t.chainHead = e.Hash
	return nil
}

func checkName(raw string) (string, string) {
	name := strings.TrimSpace(raw)
	switch {
	case !utf8.ValidString(raw):
		return "", "must be valid UTF-8"
	case name == "":
		return "", "required: 1-100 characters after trimming spaces"
	case utf8.RuneCountInString(name) > MaxNameLen:
		return "", fmt.Sprintf("at most %d characters (got %d)", MaxNameLen, utf8.RuneCountInString(name))
	case strings.IndexFunc(name, func(r rune) bool { return unicode.IsControl(r) || hidesText(r) || r == '\u2028' || r == '\u2029' }) >= 0:
		return "", "must not contain control characters (line separators and bidirectional controls included)"
	}
	if rule := checkText(name); rule != "" {
		return "", rule
	}
	return name, ""
}

// hidesText reports the bidirectional controls (U+202E and its kin), which
// make a name or description display as other text than it holds.
func hidesText(r rune) bool { return unicode.Is(unicode.Bidi_Control, r) }

func checkDescription(d string) string {
	switch {
	case !utf8.ValidString(d):
		return "must be valid UTF-8"
	case utf8.RuneCountInString(d) > MaxDescriptionLen:
		return fmt.Sprintf("at most %d characters (got %d)", MaxDescriptionLen, utf8.RuneCountInString(d))
	case strings.IndexFunc(d, func(r rune) bool { return unicode.IsControl(r) && r != '\n' && r != '\t' || hidesText(r) }) >= 0:
		return "must not contain control characters other than newline and tab (bidirectional controls included)"
	}
	return checkText(d)
}

// Token ids are "tok_" and 26 lowercase base32 characters (128 random bits):
// safe as a NATS subject token and in a URL path.
var (
	tokenIDEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)
	tokenIDPattern  = regexp.MustCompile(`^tok_[a-z2-7]{26}$`)
)

// ValidTokenID reports whether s has the shape of a token id.
func ValidTokenID(s string) bool { return tokenIDPattern.MatchString(s) }

func newTokenID(r io.Reader) (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", fmt.Errorf("new token id: %w", err)
	}
	return "tok_" + tokenIDEncoding.EncodeToString(b[:]), nil
}

func newUUID(r io.Reader) (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", fmt.Errorf("new event id: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return formatUUID(b), nil
}

// IdempotentEventID derives the event id of a command retried under an
// idempotency key: the same organization and key always give the same id, and
// keys of different organizations never collide. It is a name-based (version 5
// style) UUID over SHA-256.
func IdempotentEventID(organizationID, key string) string {
	sum := sha256.Sum256([]byte("tokenledger idempotency v1\x00" + organizationID + "\x00" + key))
	var b [16]byte
	copy(b[:], sum[:16])
	b[6] = b[6]&0x0f | 0x50
	b[8] = b[8]&0x3f | 0x80
	return formatUUID(b)
}

func formatUUID(b [16]byte) string {
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
