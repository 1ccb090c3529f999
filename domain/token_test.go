package domain_test

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"maps"
	mrand "math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// t0 is the fixed "now" of every test; later commands run at t0 plus a delay.
var t0 = time.Date(2025, time.March, 14, 9, 26, 53, 589793000, time.UTC)

const day = 24 * time.Hour

var (
	tokenIDRe = regexp.MustCompile(`^tok_[a-z2-7]{26}$`)
	uuidV4Re  = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
)

var testActor = domain.Actor{TokenID: "tok_actor", RequestID: "req-42", SourceIP: "192.0.2.7", UserAgent: "ledger-cli/1.0"}

// envAt is an Env at the given time with crypto randomness.
func envAt(now time.Time) domain.Env {
	return domain.Env{Now: now, Rand: rand.Reader, Actor: testActor}
}

// seededEnv is an Env whose randomness is reproducible.
func seededEnv(now time.Time, seed byte) domain.Env {
	return domain.Env{Now: now, Rand: mrand.NewChaCha8([32]byte{seed}), Actor: testActor}
}

func intPtr(n int) *int       { return &n }
func strPtr(s string) *string { return &s }

func orgCmd() domain.CreateToken {
	return domain.CreateToken{OrganizationID: "org-1", Scope: "ORGANIZATION", Name: "ci bot"}
}

func wsCmd() domain.CreateToken {
	return domain.CreateToken{OrganizationID: "org-1", Scope: "WORKSPACE", WorkspaceID: "ws-1", Name: "ci bot"}
}

func depCmd() domain.CreateToken {
	return domain.CreateToken{OrganizationID: "org-1", Scope: "DEPLOYMENT", WorkspaceID: "ws-1", DeploymentID: "dep-1", Name: "ci bot"}
}

// mustCreate creates a token at t0 and fails the test on error.
func mustCreate(t *testing.T, cmd domain.CreateToken) (*domain.Token, domain.Event, domain.Secret) {
	t.Helper()
	tok, e, s, err := domain.Create(cmd, envAt(t0))
	if err != nil {
		t.Fatalf("Create(%+v): %v", cmd, err)
	}
	return tok, e, s
}

// problemFields returns the sorted fields a *ValidationError names, failing the
// test when err is not one.
func problemFields(t *testing.T, err error) []string {
	t.Helper()
	var ve *domain.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error = %v (%T), want *domain.ValidationError", err, err)
	}
	fields := make([]string, 0, len(ve.Problems))
	for _, p := range ve.Problems {
		if p.Rule == "" {
			t.Errorf("problem for field %q has an empty rule", p.Field)
		}
		fields = append(fields, p.Field)
	}
	slices.Sort(fields)
	return fields
}

// wantProblems checks that err is a *ValidationError naming exactly these fields.
func wantProblems(t *testing.T, err error, fields ...string) {
	t.Helper()
	got := problemFields(t, err)
	want := slices.Clone(fields)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("problem fields = %v, want %v (error: %v)", got, want, err)
	}
}

// assertSameToken compares every getter of two tokens.
func assertSameToken(t *testing.T, want, got *domain.Token) {
	t.Helper()
	type pair struct {
		name      string
		want, got any
	}
	for _, p := range []pair{
		{"ID", want.ID(), got.ID()},
		{"OrganizationID", want.OrganizationID(), got.OrganizationID()},
		{"Scope", want.Scope(), got.Scope()},
		{"WorkspaceID", want.WorkspaceID(), got.WorkspaceID()},
		{"DeploymentID", want.DeploymentID(), got.DeploymentID()},
		{"Name", want.Name(), got.Name()},
		{"Description", want.Description(), got.Description()},
		{"Role", want.Role(), got.Role()},
		{"ExpirationDays", want.ExpirationDays(), got.ExpirationDays()},
		{"Version", want.Version(), got.Version()},
		{"SecretHash", want.SecretHash(), got.SecretHash()},
		{"Fingerprint", want.Fingerprint(), got.Fingerprint()},
		{"Deleted", want.Deleted(), got.Deleted()},
	} {
		if p.want != p.got {
			t.Errorf("%s = %v, want %v", p.name, p.got, p.want)
		}
	}
	for _, p := range []struct {
		name      string
		want, got time.Time
	}{
		{"ExpiresAt", want.ExpiresAt(), got.ExpiresAt()},
		{"CreatedAt", want.CreatedAt(), got.CreatedAt()},
		{"UpdatedAt", want.UpdatedAt(), got.UpdatedAt()},
		{"RotatedAt", want.RotatedAt(), got.RotatedAt()},
		{"DeletedAt", want.DeletedAt(), got.DeletedAt()},
	} {
		if !p.want.Equal(p.got) || p.want.IsZero() != p.got.IsZero() {
			t.Errorf("%s = %v, want %v", p.name, p.got, p.want)
		}
	}
	if !maps.Equal(want.WorkspaceRoles(), got.WorkspaceRoles()) {
		t.Errorf("WorkspaceRoles = %v, want %v", got.WorkspaceRoles(), want.WorkspaceRoles())
	}
	for _, at := range []time.Time{t0, t0.Add(400 * day)} {
		if w, g := want.Status(at), got.Status(at); w != g {
			t.Errorf("Status(%v) = %v, want %v", at, g, w)
		}
	}
}

func TestCreate(t *testing.T) {
	tests := []struct {
		name        string
		cmd         domain.CreateToken
		wantScope   domain.Scope
		wantWS      string
		wantDep     string
		wantName    string
		wantRole    domain.Role
		wantDays    int
		wantExpires time.Time // zero: never
		wantPrefix  string
	}{
		{
			name:       "organization default role never expires",
			cmd:        domain.CreateToken{OrganizationID: "org-1", Scope: "ORGANIZATION", Name: "  CI bot  ", Description: "keeps  inner\n spacing"},
			wantScope:  domain.ScopeOrganization,
			wantName:   "CI bot",
			wantRole:   domain.RoleOrganizationMember,
			wantPrefix: "tlo_",
		},
		{
			name:        "workspace default role expires in 30 days",
			cmd:         domain.CreateToken{OrganizationID: "org-1", Scope: "WORKSPACE", WorkspaceID: "ws-1", Name: "\tdeploy\n", ExpirationDays: intPtr(30)},
			wantScope:   domain.ScopeWorkspace,
			wantWS:      "ws-1",
			wantName:    "deploy",
			wantRole:    domain.RoleWorkspaceMember,
			wantDays:    30,
			wantExpires: t0.Add(30 * day),
			wantPrefix:  "tlw_",
		},
		{
			name:        "deployment default role expires in 365 days",
			cmd:         domain.CreateToken{OrganizationID: "org-1", Scope: "DEPLOYMENT", WorkspaceID: "ws-1", DeploymentID: "dep-1", Name: "runner", ExpirationDays: intPtr(365)},
			wantScope:   domain.ScopeDeployment,
			wantWS:      "ws-1",
			wantDep:     "dep-1",
			wantName:    "runner",
			wantRole:    domain.RoleDeploymentAdmin,
			wantDays:    365,
			wantExpires: t0.Add(365 * day),
			wantPrefix:  "tld_",
		},
		{
			name:       "organization explicit role",
			cmd:        domain.CreateToken{OrganizationID: "org-1", Scope: "ORGANIZATION", Name: "billing", Role: "ORGANIZATION_BILLING_ADMIN"},
			wantScope:  domain.ScopeOrganization,
			wantName:   "billing",
			wantRole:   domain.RoleOrganizationBillingAdmin,
			wantPrefix: "tlo_",
		},
		{
			name:        "workspace explicit role expires in 1 day",
			cmd:         domain.CreateToken{OrganizationID: "org-1", Scope: "WORKSPACE", WorkspaceID: "ws-1", Name: "op", Role: "WORKSPACE_OPERATOR", ExpirationDays: intPtr(1)},
			wantScope:   domain.ScopeWorkspace,
			wantWS:      "ws-1",
			wantName:    "op",
			wantRole:    domain.RoleWorkspaceOperator,
			wantDays:    1,
			wantExpires: t0.Add(day),
			wantPrefix:  "tlw_",
		},
		{
			name:       "scope and role in any case",
			cmd:        domain.CreateToken{OrganizationID: "org-1", Scope: " workspace ", WorkspaceID: "ws-1", Name: "lower", Role: " workspace_owner "},
			wantScope:  domain.ScopeWorkspace,
			wantWS:     "ws-1",
			wantName:   "lower",
			wantRole:   domain.RoleWorkspaceOwner,
			wantPrefix: "tlw_",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, e, secret, err := domain.Create(tc.cmd, envAt(t0))
			if err != nil {
				t.Fatalf("Create: %v", err)
			}

			// The token.
			if !tokenIDRe.MatchString(tok.ID()) || !domain.ValidTokenID(tok.ID()) {
				t.Errorf("ID = %q, want tok_ and 26 base32 characters", tok.ID())
			}
			if tok.OrganizationID() != tc.cmd.OrganizationID {
				t.Errorf("OrganizationID = %q, want %q", tok.OrganizationID(), tc.cmd.OrganizationID)
			}
			if tok.Scope() != tc.wantScope {
				t.Errorf("Scope = %q, want %q", tok.Scope(), tc.wantScope)
			}
			if tok.WorkspaceID() != tc.wantWS {
				t.Errorf("WorkspaceID = %q, want %q", tok.WorkspaceID(), tc.wantWS)
			}
			if tok.DeploymentID() != tc.wantDep {
				t.Errorf("DeploymentID = %q, want %q", tok.DeploymentID(), tc.wantDep)
			}
			if tok.Name() != tc.wantName {
				t.Errorf("Name = %q, want %q", tok.Name(), tc.wantName)
			}
			if tok.Description() != tc.cmd.Description {
				t.Errorf("Description = %q, want %q (verbatim)", tok.Description(), tc.cmd.Description)
			}
			if tok.Role() != tc.wantRole {
				t.Errorf("Role = %q, want %q", tok.Role(), tc.wantRole)
			}
			if tok.ExpirationDays() != tc.wantDays {
				t.Errorf("ExpirationDays = %d, want %d", tok.ExpirationDays(), tc.wantDays)
			}
			if !tok.ExpiresAt().Equal(tc.wantExpires) || tok.ExpiresAt().IsZero() != tc.wantExpires.IsZero() {
				t.Errorf("ExpiresAt = %v, want %v", tok.ExpiresAt(), tc.wantExpires)
			}
			if tok.Version() != 1 {
				t.Errorf("Version = %d, want 1", tok.Version())
			}
			if !tok.CreatedAt().Equal(t0) || !tok.UpdatedAt().Equal(t0) {
				t.Errorf("CreatedAt, UpdatedAt = %v, %v, want %v", tok.CreatedAt(), tok.UpdatedAt(), t0)
			}
			if !tok.RotatedAt().IsZero() || !tok.DeletedAt().IsZero() || tok.Deleted() {
				t.Errorf("new token: RotatedAt %v, DeletedAt %v, Deleted %v; want zero, zero, false", tok.RotatedAt(), tok.DeletedAt(), tok.Deleted())
			}
			if len(tok.WorkspaceRoles()) != 0 {
				t.Errorf("WorkspaceRoles = %v, want none", tok.WorkspaceRoles())
			}
			if got := tok.Status(t0); got != domain.StatusActive {
				t.Errorf("Status(now) = %q, want active", got)
			}

			// The secret.
			if secret.IsZero() {
				t.Fatal("secret is zero")
			}
			plain := secret.Reveal()
			if !strings.HasPrefix(plain, tc.wantPrefix) {
				t.Errorf("secret prefix = %q, want %q", plain[:4], tc.wantPrefix)
			}
			if sc, err := domain.CheckSecretFormat(plain); err != nil || sc != tc.wantScope {
				t.Errorf("CheckSecretFormat(secret) = %q, %v; want %q, nil", sc, err, tc.wantScope)
			}
			if tok.SecretHash() != domain.Hash(plain) {
				t.Errorf("token SecretHash = %v, want Hash(secret)", tok.SecretHash())
			}
			if tok.Fingerprint() != domain.Fingerprint(plain) {
				t.Errorf("token Fingerprint = %q, want %q", tok.Fingerprint(), domain.Fingerprint(plain))
			}

			// The event.
			if e.Type != domain.TokenCreated {
				t.Errorf("event Type = %q, want TokenCreated", e.Type)
			}
			if e.TokenID != tok.ID() || e.OrganizationID != tc.cmd.OrganizationID {
				t.Errorf("event token = %s/%s, want %s/%s", e.OrganizationID, e.TokenID, tc.cmd.OrganizationID, tok.ID())
			}
			if e.Version != 1 {
				t.Errorf("event Version = %d, want 1", e.Version)
			}
			if !e.OccurredAt.Equal(t0) {
				t.Errorf("event OccurredAt = %v, want %v", e.OccurredAt, t0)
			}
			if e.Actor != testActor {
				t.Errorf("event Actor = %+v, want %+v", e.Actor, testActor)
			}
			if !uuidV4Re.MatchString(e.ID) {
				t.Errorf("event ID = %q, want a random (v4) UUID", e.ID)
			}
			d, ok := e.Data.(domain.CreatedData)
			if !ok {
				t.Fatalf("event Data = %T, want domain.CreatedData", e.Data)
			}
			if d.SecretHash != domain.Hash(plain) {
				t.Errorf("CreatedData.SecretHash = %v, want Hash(secret) %v", d.SecretHash, domain.Hash(plain))
			}
			if d.Fingerprint != domain.Fingerprint(plain) {
				t.Errorf("CreatedData.Fingerprint = %q, want %q", d.Fingerprint, domain.Fingerprint(plain))
			}
			if d.Scope != tc.wantScope || d.WorkspaceID != tc.wantWS || d.DeploymentID != tc.wantDep ||
				d.Name != tc.wantName || d.Description != tc.cmd.Description || d.Role != tc.wantRole || d.ExpirationDays != tc.wantDays {
				t.Errorf("CreatedData = %+v, does not match the token", d)
			}
			switch {
			case tc.wantExpires.IsZero() && d.ExpiresAt != nil:
				t.Errorf("CreatedData.ExpiresAt = %v, want nil (never expires)", *d.ExpiresAt)
			case !tc.wantExpires.IsZero() && (d.ExpiresAt == nil || !d.ExpiresAt.Equal(tc.wantExpires)):
				t.Errorf("CreatedData.ExpiresAt = %v, want %v", d.ExpiresAt, tc.wantExpires)
			}

			// The stored form of the event never carries the secret.
			b, err := json.Marshal(e)
			if err != nil {
				t.Fatalf("json.Marshal(event): %v", err)
			}
			if bytes.Contains(b, []byte(plain)) || bytes.Contains(b, []byte(plain[4:])) {
				t.Errorf("event JSON contains the secret: %s", b)
			}
			if !bytes.Contains(b, []byte(domain.Hash(plain).String())) {
				t.Errorf("event JSON lacks the secret hash: %s", b)
			}
		})
	}
}

func TestCreateDeterministicWithSeededRand(t *testing.T) {
	tok1, e1, s1, err := domain.Create(orgCmd(), seededEnv(t0, 7))
	if err != nil {
		t.Fatal(err)
	}
	tok2, e2, s2, err := domain.Create(orgCmd(), seededEnv(t0, 7))
	if err != nil {
		t.Fatal(err)
	}
	tok3, _, s3, err := domain.Create(orgCmd(), seededEnv(t0, 8))
	if err != nil {
		t.Fatal(err)
	}
	if tok1.ID() != tok2.ID() || s1.Reveal() != s2.Reveal() || e1.ID != e2.ID {
		t.Errorf("same seed gave different ids or secrets: %s/%s, %s/%s", tok1.ID(), tok2.ID(), e1.ID, e2.ID)
	}
	if tok1.ID() == tok3.ID() || s1.Reveal() == s3.Reveal() {
		t.Errorf("different seeds gave the same id or secret")
	}
}

func TestCreateRejects(t *testing.T) {
	long := func(r rune, n int) string { return strings.Repeat(string(r), n) }
	tests := []struct {
		name   string
		cmd    func() domain.CreateToken
		fields []string
	}{
		{"unknown role", func() domain.CreateToken { c := orgCmd(); c.Role = "SUPERUSER"; return c }, []string{"role"}},
		{"workspace role on organization token", func() domain.CreateToken { c := orgCmd(); c.Role = "WORKSPACE_OWNER"; return c }, []string{"role"}},
		{"organization role on deployment token", func() domain.CreateToken { c := depCmd(); c.Role = "ORGANIZATION_OWNER"; return c }, []string{"role"}},
		{"deployment role on workspace token", func() domain.CreateToken { c := wsCmd(); c.Role = "DEPLOYMENT_ADMIN"; return c }, []string{"role"}},
		{"workspace role on deployment token", func() domain.CreateToken { c := depCmd(); c.Role = "WORKSPACE_OWNER"; return c }, []string{"role"}},
		{"expiration 0", func() domain.CreateToken { c := orgCmd(); c.ExpirationDays = intPtr(0); return c }, []string{"expiration_days"}},
		{"expiration 366", func() domain.CreateToken { c := wsCmd(); c.ExpirationDays = intPtr(366); return c }, []string{"expiration_days"}},
		{"expiration -1", func() domain.CreateToken { c := depCmd(); c.ExpirationDays = intPtr(-1); return c }, []string{"expiration_days"}},
		{"empty name", func() domain.CreateToken { c := orgCmd(); c.Name = ""; return c }, []string{"name"}},
		{"whitespace-only name", func() domain.CreateToken { c := orgCmd(); c.Name = " \t\n "; return c }, []string{"name"}},
		{"101-character name", func() domain.CreateToken { c := orgCmd(); c.Name = long('a', 101); return c }, []string{"name"}},
		{"101-rune name", func() domain.CreateToken { c := orgCmd(); c.Name = long('é', 101); return c }, []string{"name"}},
		{"NUL in name", func() domain.CreateToken { c := orgCmd(); c.Name = "ci\x00bot"; return c }, []string{"name"}},
		{"newline in name", func() domain.CreateToken { c := orgCmd(); c.Name = "ci\nbot"; return c }, []string{"name"}},
		{"DEL in name", func() domain.CreateToken { c := orgCmd(); c.Name = "ci\x7fbot"; return c }, []string{"name"}},
		{"escape in name", func() domain.CreateToken { c := orgCmd(); c.Name = "\x1b[31mred"; return c }, []string{"name"}},
		{"invalid UTF-8 in name", func() domain.CreateToken { c := orgCmd(); c.Name = "ci\xffbot"; return c }, []string{"name"}},
		{"1001-character description", func() domain.CreateToken { c := orgCmd(); c.Description = long('d', 1001); return c }, []string{"description"}},
		{"1001-rune description", func() domain.CreateToken { c := orgCmd(); c.Description = long('ü', 1001); return c }, []string{"description"}},
		{"invalid UTF-8 in description", func() domain.CreateToken { c := orgCmd(); c.Description = "bad\xc3"; return c }, []string{"description"}},
		{"NUL in description", func() domain.CreateToken { c := orgCmd(); c.Description = "a\x00b"; return c }, []string{"description"}},
		{"unknown scope", func() domain.CreateToken { c := orgCmd(); c.Scope = "PROJECT"; return c }, []string{"scope"}},
		{"empty scope", func() domain.CreateToken { c := orgCmd(); c.Scope = ""; return c }, []string{"scope"}},
		{"workspace token without workspace", func() domain.CreateToken { c := wsCmd(); c.WorkspaceID = ""; return c }, []string{"workspace_id"}},
		{"workspace token with invalid workspace", func() domain.CreateToken { c := wsCmd(); c.WorkspaceID = "ws.1"; return c }, []string{"workspace_id"}},
		{"workspace token with deployment", func() domain.CreateToken { c := wsCmd(); c.DeploymentID = "dep-1"; return c }, []string{"deployment_id"}},
		{"deployment token without workspace", func() domain.CreateToken { c := depCmd(); c.WorkspaceID = ""; return c }, []string{"workspace_id"}},
		{"deployment token without deployment", func() domain.CreateToken { c := depCmd(); c.DeploymentID = ""; return c }, []string{"deployment_id"}},
		{"deployment token with invalid deployment", func() domain.CreateToken { c := depCmd(); c.DeploymentID = "dep 1"; return c }, []string{"deployment_id"}},
		{"organization token with workspace", func() domain.CreateToken { c := orgCmd(); c.WorkspaceID = "ws-1"; return c }, []string{"workspace_id"}},
		{"organization token with deployment", func() domain.CreateToken { c := orgCmd(); c.DeploymentID = "dep-1"; return c }, []string{"deployment_id"}},
		{"organization id with dot", func() domain.CreateToken { c := orgCmd(); c.OrganizationID = "a.b"; return c }, []string{"organization_id"}},
		{"empty organization id", func() domain.CreateToken { c := orgCmd(); c.OrganizationID = ""; return c }, []string{"organization_id"}},
		{"organization id with wildcard", func() domain.CreateToken { c := orgCmd(); c.OrganizationID = "a*"; return c }, []string{"organization_id"}},
		{"organization id with space", func() domain.CreateToken { c := orgCmd(); c.OrganizationID = "a b"; return c }, []string{"organization_id"}},
		{"organization id starting with dash", func() domain.CreateToken { c := orgCmd(); c.OrganizationID = "-ab"; return c }, []string{"organization_id"}},
		{"organization id of 65 characters", func() domain.CreateToken { c := orgCmd(); c.OrganizationID = long('o', 65); return c }, []string{"organization_id"}},
		{
			name: "every broken rule reported together",
			cmd: func() domain.CreateToken {
				return domain.CreateToken{
					OrganizationID: "a.b",
					Scope:          "DEPLOYMENT",
					Name:           "  ",
					Description:    long('x', 1001),
					Role:           "WORKSPACE_OWNER",
					ExpirationDays: intPtr(0),
				}
			},
			fields: []string{"organization_id", "name", "description", "role", "workspace_id", "deployment_id", "expiration_days"},
		},
		{
			// ValidationError promises every broken rule at once; an unknown
			// role is wrong whatever the scope turns out to be.
			name: "unknown role reported with a bad scope",
			cmd: func() domain.CreateToken {
				c := orgCmd()
				c.Scope, c.Role = "PROJECT", "SUPERUSER"
				return c
			},
			fields: []string{"scope", "role"},
		},
		{
			name: "bad scope reported with other problems",
			cmd: func() domain.CreateToken {
				return domain.CreateToken{OrganizationID: "", Scope: "TEAM", Name: "ok", ExpirationDays: intPtr(366)}
			},
			fields: []string{"organization_id", "scope", "expiration_days"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, e, secret, err := domain.Create(tc.cmd(), envAt(t0))
			if err == nil {
				t.Fatalf("Create succeeded (token %s), want a validation error on %v", tok.ID(), tc.fields)
			}
			wantProblems(t, err, tc.fields...)
			if tok != nil || !secret.IsZero() || e.Type != "" {
				t.Errorf("failed Create returned token %v, event %+v, secret issued %v", tok, e, !secret.IsZero())
			}
		})
	}
}

func TestCreateAcceptsLimits(t *testing.T) {
	long := func(r rune, n int) string { return strings.Repeat(string(r), n) }
	tests := []struct {
		name     string
		cmd      func() domain.CreateToken
		wantName string
	}{
		{"expiration 1", func() domain.CreateToken { c := orgCmd(); c.ExpirationDays = intPtr(1); return c }, "ci bot"},
		{"expiration 365", func() domain.CreateToken { c := orgCmd(); c.ExpirationDays = intPtr(365); return c }, "ci bot"},
		{"100-character name", func() domain.CreateToken { c := orgCmd(); c.Name = long('a', 100); return c }, long('a', 100)},
		{"100-rune name of é", func() domain.CreateToken { c := orgCmd(); c.Name = long('é', 100); return c }, long('é', 100)},
		{"100-rune name of emoji", func() domain.CreateToken { c := orgCmd(); c.Name = long('🔑', 100); return c }, long('🔑', 100)},
		{"100 characters after trimming", func() domain.CreateToken { c := orgCmd(); c.Name = "  " + long('b', 100) + "  "; return c }, long('b', 100)},
		{"1000-character description", func() domain.CreateToken { c := orgCmd(); c.Description = long('d', 1000); return c }, "ci bot"},
		{"1000-rune description", func() domain.CreateToken { c := orgCmd(); c.Description = long('ü', 1000); return c }, "ci bot"},
		{"description with newline and tab", func() domain.CreateToken { c := orgCmd(); c.Description = "line one\n\tline two"; return c }, "ci bot"},
		{"64-character organization id", func() domain.CreateToken { c := orgCmd(); c.OrganizationID = "o" + long('_', 63); return c }, "ci bot"},
		{"single-character ids", func() domain.CreateToken {
			c := depCmd()
			c.OrganizationID, c.WorkspaceID, c.DeploymentID = "o", "w", "d"
			return c
		}, "ci bot"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := tc.cmd()
			tok, _, _, err := domain.Create(cmd, envAt(t0))
			if err != nil {
				t.Fatalf("Create: %v", err)
			}
			if tok.Name() != tc.wantName {
				t.Errorf("Name = %q, want %q", tok.Name(), tc.wantName)
			}
			if tok.Description() != cmd.Description {
				t.Errorf("Description = %q, want %q", tok.Description(), cmd.Description)
			}
			if cmd.ExpirationDays != nil {
				if want := t0.Add(time.Duration(*cmd.ExpirationDays) * day); !tok.ExpiresAt().Equal(want) {
					t.Errorf("ExpiresAt = %v, want %v", tok.ExpiresAt(), want)
				}
			}
		})
	}
}

func TestCreateRandomnessFailure(t *testing.T) {
	boom := errors.New("no entropy")
	tests := []struct {
		name string
		rand io.Reader
	}{
		{"no bytes at all", iotest.ErrReader(boom)},
		{"enough for the id only", io.MultiReader(bytes.NewReader(make([]byte, 16)), iotest.ErrReader(boom))},
		{"enough for id and secret only", io.MultiReader(bytes.NewReader(make([]byte, 48)), iotest.ErrReader(boom))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := envAt(t0)
			env.Rand = tc.rand
			tok, _, secret, err := domain.Create(orgCmd(), env)
			if err == nil {
				t.Fatal("Create succeeded with a failing random source")
			}
			var ve *domain.ValidationError
			if errors.As(err, &ve) {
				t.Errorf("error = %v, a randomness failure is not the caller's input error", err)
			}
			if tok != nil || !secret.IsZero() {
				t.Errorf("failed Create still returned token %v / a secret", tok)
			}
		})
	}
}

func TestUpdate(t *testing.T) {
	t1 := t0.Add(time.Hour)
	tests := []struct {
		name      string
		create    domain.CreateToken
		cmd       domain.UpdateToken
		wantName  string
		wantDesc  string
		wantRole  domain.Role
		wantData  domain.UpdatedData
		wantNoOp  bool
		wantField []string // validation error fields; nil: success
	}{
		{
			name:     "name",
			create:   domain.CreateToken{OrganizationID: "org-1", Scope: "ORGANIZATION", Name: "old", Description: "desc"},
			cmd:      domain.UpdateToken{Name: strPtr("  new  ")},
			wantName: "new", wantDesc: "desc", wantRole: domain.RoleOrganizationMember,
			wantData: domain.UpdatedData{Name: strPtr("new"), PreviousName: strPtr("old")},
		},
		{
			name:     "description cleared",
			create:   domain.CreateToken{OrganizationID: "org-1", Scope: "ORGANIZATION", Name: "n", Description: "desc"},
			cmd:      domain.UpdateToken{Description: strPtr("")},
			wantName: "n", wantDesc: "", wantRole: domain.RoleOrganizationMember,
			wantData: domain.UpdatedData{Description: strPtr(""), PreviousDescription: strPtr("desc")},
		},
		{
			name:     "role",
			create:   domain.CreateToken{OrganizationID: "org-1", Scope: "WORKSPACE", WorkspaceID: "ws-1", Name: "n"},
			cmd:      domain.UpdateToken{Role: strPtr("workspace_author")},
			wantName: "n", wantRole: domain.RoleWorkspaceAuthor,
			wantData: domain.UpdatedData{Role: domain.RoleWorkspaceAuthor, PreviousRole: domain.RoleWorkspaceMember},
		},
		{
			name:     "all three",
			create:   domain.CreateToken{OrganizationID: "org-1", Scope: "ORGANIZATION", Name: "a", Description: "b", Role: "ORGANIZATION_MEMBER"},
			cmd:      domain.UpdateToken{Name: strPtr("A"), Description: strPtr("B"), Role: strPtr("ORGANIZATION_OWNER")},
			wantName: "A", wantDesc: "B", wantRole: domain.RoleOrganizationOwner,
			wantData: domain.UpdatedData{
				Name: strPtr("A"), PreviousName: strPtr("a"),
				Description: strPtr("B"), PreviousDescription: strPtr("b"),
				Role: domain.RoleOrganizationOwner, PreviousRole: domain.RoleOrganizationMember,
			},
		},
		{
			name:     "only the fields that change are recorded",
			create:   domain.CreateToken{OrganizationID: "org-1", Scope: "ORGANIZATION", Name: "same", Description: "old"},
			cmd:      domain.UpdateToken{Name: strPtr("same"), Description: strPtr("new"), Role: strPtr("ORGANIZATION_MEMBER")},
			wantName: "same", wantDesc: "new", wantRole: domain.RoleOrganizationMember,
			wantData: domain.UpdatedData{Description: strPtr("new"), PreviousDescription: strPtr("old")},
		},
		{
			name:     "same values are a no-op",
			create:   domain.CreateToken{OrganizationID: "org-1", Scope: "ORGANIZATION", Name: "same", Description: "d", Role: "ORGANIZATION_OWNER"},
			cmd:      domain.UpdateToken{Name: strPtr(" same "), Description: strPtr("d"), Role: strPtr("organization_owner")},
			wantName: "same", wantDesc: "d", wantRole: domain.RoleOrganizationOwner,
			wantNoOp: true,
		},
		{
			name:      "nothing given",
			create:    orgCmd(),
			cmd:       domain.UpdateToken{},
			wantField: []string{"name"},
		},
		{
			name:      "workspace role on organization token",
			create:    orgCmd(),
			cmd:       domain.UpdateToken{Role: strPtr("WORKSPACE_OWNER")},
			wantField: []string{"role"},
		},
		{
			name:      "deployment token cannot take a workspace role",
			create:    depCmd(),
			cmd:       domain.UpdateToken{Role: strPtr("WORKSPACE_MEMBER")},
			wantField: []string{"role"},
		},
		{
			name:      "unknown role",
			create:    wsCmd(),
			cmd:       domain.UpdateToken{Role: strPtr("ROOT")},
			wantField: []string{"role"},
		},
		{
			name:      "empty role",
			create:    wsCmd(),
			cmd:       domain.UpdateToken{Role: strPtr("")},
			wantField: []string{"role"},
		},
		{
			name:      "blank name",
			create:    orgCmd(),
			cmd:       domain.UpdateToken{Name: strPtr("   ")},
			wantField: []string{"name"},
		},
		{
			name:      "control character in name",
			create:    orgCmd(),
			cmd:       domain.UpdateToken{Name: strPtr("a\x00b")},
			wantField: []string{"name"},
		},
		{
			name:      "101-character name",
			create:    orgCmd(),
			cmd:       domain.UpdateToken{Name: strPtr(strings.Repeat("n", 101))},
			wantField: []string{"name"},
		},
		{
			name:      "1001-character description",
			create:    orgCmd(),
			cmd:       domain.UpdateToken{Description: strPtr(strings.Repeat("d", 1001))},
			wantField: []string{"description"},
		},
		{
			name:      "a valid field is not applied when another is invalid",
			create:    orgCmd(),
			cmd:       domain.UpdateToken{Name: strPtr(""), Description: strPtr("fine"), Role: strPtr("DEPLOYMENT_ADMIN")},
			wantField: []string{"name", "role"},
		},
		{
			name:      "a valid name change is not applied when the role is invalid",
			create:    orgCmd(),
			cmd:       domain.UpdateToken{Name: strPtr("renamed"), Role: strPtr("WORKSPACE_OWNER")},
			wantField: []string{"role"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, _, _ := mustCreate(t, tc.create)
			before := tok.Clone()
			e, changed, err := tok.Update(tc.cmd, envAt(t1))

			if tc.wantField != nil {
				if err == nil {
					t.Fatalf("Update succeeded, want validation error on %v", tc.wantField)
				}
				wantProblems(t, err, tc.wantField...)
				if changed || e.Type != "" {
					t.Errorf("failed Update: changed=%v event=%+v", changed, e)
				}
				assertSameToken(t, before, tok)
				return
			}
			if err != nil {
				t.Fatalf("Update: %v", err)
			}
			if tok.Name() != tc.wantName || tok.Description() != tc.wantDesc || tok.Role() != tc.wantRole {
				t.Errorf("token name/description/role = %q/%q/%q, want %q/%q/%q",
					tok.Name(), tok.Description(), tok.Role(), tc.wantName, tc.wantDesc, tc.wantRole)
			}
			if tc.wantNoOp {
				if changed || e.Type != "" {
					t.Errorf("no-op Update: changed=%v event=%+v, want false and no event", changed, e)
				}
				assertSameToken(t, before, tok)
				return
			}
			if !changed {
				t.Error("changed = false, want true")
			}
			if e.Type != domain.TokenUpdated || e.Version != 2 || e.TokenID != tok.ID() || !e.OccurredAt.Equal(t1) {
				t.Errorf("event = %s v%d token %s at %v, want TokenUpdated v2 token %s at %v", e.Type, e.Version, e.TokenID, e.OccurredAt, tok.ID(), t1)
			}
			d, ok := e.Data.(domain.UpdatedData)
			if !ok {
				t.Fatalf("event Data = %T, want UpdatedData", e.Data)
			}
			if !updatedDataEqual(d, tc.wantData) {
				t.Errorf("UpdatedData = %s, want %s", showUpdated(d), showUpdated(tc.wantData))
			}
			if tok.Version() != 2 || !tok.UpdatedAt().Equal(t1) || !tok.CreatedAt().Equal(t0) {
				t.Errorf("version %d updated %v created %v, want 2, %v, %v", tok.Version(), tok.UpdatedAt(), tok.CreatedAt(), t1, t0)
			}
			if tok.SecretHash() != before.SecretHash() {
				t.Error("Update changed the secret hash")
			}
		})
	}
}

func updatedDataEqual(a, b domain.UpdatedData) bool {
	eq := func(x, y *string) bool { return (x == nil) == (y == nil) && (x == nil || *x == *y) }
	return eq(a.Name, b.Name) && eq(a.PreviousName, b.PreviousName) &&
		eq(a.Description, b.Description) && eq(a.PreviousDescription, b.PreviousDescription) &&
		a.Role == b.Role && a.PreviousRole == b.PreviousRole
}

func showUpdated(d domain.UpdatedData) string {
	s := func(p *string) string {
		if p == nil {
			return "nil"
		}
		return "\"" + *p + "\""
	}
	return "{Name:" + s(d.Name) + " PreviousName:" + s(d.PreviousName) +
		" Description:" + s(d.Description) + " PreviousDescription:" + s(d.PreviousDescription) +
		" Role:" + string(d.Role) + " PreviousRole:" + string(d.PreviousRole) + "}"
}

func TestRotate(t *testing.T) {
	tests := []struct {
		name        string
		create      domain.CreateToken
		rotateAfter time.Duration
		wantExpires time.Time // zero: never
	}{
		{
			name:   "never-expiring organization token with workspace roles",
			create: domain.CreateToken{OrganizationID: "org-1", Scope: "ORGANIZATION", Name: "n", Description: "d", Role: "ORGANIZATION_OWNER"},
			// Assignments are added below for organization tokens.
			rotateAfter: 10 * day,
		},
		{
			name:        "expiring workspace token is renewed from the rotation time",
			create:      domain.CreateToken{OrganizationID: "org-1", Scope: "WORKSPACE", WorkspaceID: "ws-1", Name: "n", Description: "d", Role: "WORKSPACE_AUTHOR", ExpirationDays: intPtr(30)},
			rotateAfter: 10 * day,
			wantExpires: t0.Add(40 * day),
		},
		{
			name:        "expired deployment token is renewed",
			create:      domain.CreateToken{OrganizationID: "org-1", Scope: "DEPLOYMENT", WorkspaceID: "ws-1", DeploymentID: "dep-1", Name: "n", ExpirationDays: intPtr(7)},
			rotateAfter: 9 * day,
			wantExpires: t0.Add(16 * day),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, _, oldSecret := mustCreate(t, tc.create)
			if tok.Scope() == domain.ScopeOrganization {
				for ws, role := range map[string]string{"ws-a": "WORKSPACE_OWNER", "ws-b": "WORKSPACE_ACCESSOR"} {
					if _, _, err := tok.Assign(ws, role, envAt(t0.Add(time.Hour))); err != nil {
						t.Fatalf("Assign: %v", err)
					}
				}
			}
			before := tok.Clone()
			at := t0.Add(tc.rotateAfter)

			e, newSecret, err := tok.Rotate(envAt(at))
			if err != nil {
				t.Fatalf("Rotate: %v", err)
			}
			if newSecret.IsZero() || newSecret.Reveal() == oldSecret.Reveal() {
				t.Fatal("Rotate did not issue a new secret")
			}
			if sc, err := domain.CheckSecretFormat(newSecret.Reveal()); err != nil || sc != tok.Scope() {
				t.Errorf("CheckSecretFormat(new secret) = %q, %v; want %q", sc, err, tok.Scope())
			}
			if tok.SecretHash() != domain.Hash(newSecret.Reveal()) || tok.SecretHash() == before.SecretHash() {
				t.Error("token SecretHash is not the hash of the new secret")
			}
			if tok.Fingerprint() != domain.Fingerprint(newSecret.Reveal()) || tok.Fingerprint() == before.Fingerprint() {
				t.Error("token Fingerprint is not the fingerprint of the new secret")
			}
			if tok.Version() != before.Version()+1 || e.Version != tok.Version() {
				t.Errorf("versions: token %d event %d, want %d", tok.Version(), e.Version, before.Version()+1)
			}
			if e.Type != domain.TokenRotated || !e.OccurredAt.Equal(at) {
				t.Errorf("event %s at %v, want TokenRotated at %v", e.Type, e.OccurredAt, at)
			}
			d, ok := e.Data.(domain.RotatedData)
			if !ok {
				t.Fatalf("event Data = %T, want RotatedData", e.Data)
			}
			if d.SecretHash != domain.Hash(newSecret.Reveal()) || d.Fingerprint != domain.Fingerprint(newSecret.Reveal()) {
				t.Error("RotatedData does not name the new secret's hash and fingerprint")
			}
			if d.PreviousSecretHash != domain.Hash(oldSecret.Reveal()) || d.PreviousFingerprint != domain.Fingerprint(oldSecret.Reveal()) {
				t.Error("RotatedData does not record the previous secret's hash and fingerprint")
			}
			b, err := json.Marshal(e)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{newSecret.Reveal(), oldSecret.Reveal()} {
				if bytes.Contains(b, []byte(s)) {
					t.Errorf("rotation event JSON contains a secret: %s", b)
				}
			}

			// Kept.
			if tok.Name() != before.Name() || tok.Description() != before.Description() || tok.Role() != before.Role() ||
				tok.Scope() != before.Scope() || tok.WorkspaceID() != before.WorkspaceID() || tok.DeploymentID() != before.DeploymentID() ||
				tok.ExpirationDays() != before.ExpirationDays() || !tok.CreatedAt().Equal(before.CreatedAt()) {
				t.Error("Rotate changed the token's identity or settings")
			}
			if !maps.Equal(tok.WorkspaceRoles(), before.WorkspaceRoles()) {
				t.Errorf("WorkspaceRoles = %v, want %v", tok.WorkspaceRoles(), before.WorkspaceRoles())
			}
			if tok.Scope() == domain.ScopeOrganization && len(tok.WorkspaceRoles()) != 2 {
				t.Errorf("WorkspaceRoles = %v, want the two assignments", tok.WorkspaceRoles())
			}
			if !tok.RotatedAt().Equal(at) || !tok.UpdatedAt().Equal(at) {
				t.Errorf("RotatedAt %v UpdatedAt %v, want %v", tok.RotatedAt(), tok.UpdatedAt(), at)
			}

			// Expiry.
			if tc.wantExpires.IsZero() {
				if !tok.ExpiresAt().IsZero() || d.ExpiresAt != nil {
					t.Errorf("never-expiring token got expiry %v / %v", tok.ExpiresAt(), d.ExpiresAt)
				}
			} else {
				if !tok.ExpiresAt().Equal(tc.wantExpires) {
					t.Errorf("ExpiresAt = %v, want %v", tok.ExpiresAt(), tc.wantExpires)
				}
				if d.ExpiresAt == nil || !d.ExpiresAt.Equal(tc.wantExpires) {
					t.Errorf("RotatedData.ExpiresAt = %v, want %v", d.ExpiresAt, tc.wantExpires)
				}
			}
			if got := tok.Status(at); got != domain.StatusActive {
				t.Errorf("Status right after rotation = %q, want active", got)
			}
		})
	}
}

func TestRotateRandomnessFailureLeavesTokenUnchanged(t *testing.T) {
	boom := errors.New("no entropy")
	tests := []struct {
		name string
		rand io.Reader
	}{
		{"no bytes for the secret", iotest.ErrReader(boom)},
		{"no bytes for the event id", io.MultiReader(bytes.NewReader(make([]byte, 32)), iotest.ErrReader(boom))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, _, _ := mustCreate(t, orgCmd())
			before := tok.Clone()
			env := envAt(t0.Add(time.Hour))
			env.Rand = tc.rand
			_, secret, err := tok.Rotate(env)
			if err == nil {
				t.Fatal("Rotate succeeded with a failing random source")
			}
			if !secret.IsZero() {
				t.Error("failed Rotate returned a secret")
			}
			assertSameToken(t, before, tok)
		})
	}
}

func TestAssign(t *testing.T) {
	t.Run("organization token gets a role and changes it", func(t *testing.T) {
		tok, _, _ := mustCreate(t, orgCmd())
		e, changed, err := tok.Assign("ws-1", "workspace_author", envAt(t0.Add(time.Minute)))
		if err != nil || !changed {
			t.Fatalf("Assign = changed %v, %v; want true, nil", changed, err)
		}
		want := domain.AssignedData{WorkspaceID: "ws-1", Role: domain.RoleWorkspaceAuthor}
		if e.Type != domain.TokenAssigned || e.Version != 2 || e.Data != want {
			t.Errorf("event = %s v%d %+v, want TokenAssigned v2 %+v", e.Type, e.Version, e.Data, want)
		}
		if r, ok := tok.WorkspaceRole("ws-1"); !ok || r != domain.RoleWorkspaceAuthor {
			t.Errorf("WorkspaceRole(ws-1) = %q, %v", r, ok)
		}

		e, changed, err = tok.Assign("ws-1", "WORKSPACE_OWNER", envAt(t0.Add(2*time.Minute)))
		if err != nil || !changed {
			t.Fatalf("reassign = changed %v, %v; want true, nil", changed, err)
		}
		want = domain.AssignedData{WorkspaceID: "ws-1", Role: domain.RoleWorkspaceOwner, PreviousRole: domain.RoleWorkspaceAuthor}
		if e.Data != want || e.Version != 3 {
			t.Errorf("reassign event v%d %+v, want v3 %+v", e.Version, e.Data, want)
		}

		e, changed, err = tok.Assign("ws-1", "WORKSPACE_OWNER", envAt(t0.Add(3*time.Minute)))
		if err != nil || changed || e.Type != "" {
			t.Errorf("same role again = %+v, changed %v, %v; want no event, false, nil", e, changed, err)
		}
		if tok.Version() != 3 {
			t.Errorf("Version = %d after a no-op assign, want 3", tok.Version())
		}

		if _, _, err := tok.Assign("ws-2", "WORKSPACE_ACCESSOR", envAt(t0.Add(4*time.Minute))); err != nil {
			t.Fatal(err)
		}
		wantRoles := map[string]domain.Role{"ws-1": domain.RoleWorkspaceOwner, "ws-2": domain.RoleWorkspaceAccessor}
		if got := tok.WorkspaceRoles(); !maps.Equal(got, wantRoles) {
			t.Errorf("WorkspaceRoles = %v, want %v", got, wantRoles)
		}
		if tok.Role() != domain.RoleOrganizationMember {
			t.Errorf("Assign changed the organization role to %q", tok.Role())
		}

		// The map handed out is a copy.
		roles := tok.WorkspaceRoles()
		roles["ws-evil"] = domain.RoleWorkspaceOwner
		delete(roles, "ws-1")
		if got := tok.WorkspaceRoles(); !maps.Equal(got, wantRoles) {
			t.Errorf("mutating WorkspaceRoles() changed the token: %v", got)
		}
	})

	rejects := []struct {
		name   string
		create domain.CreateToken
		ws     string
		role   string
		fields []string
	}{
		{"workspace token", wsCmd(), "ws-2", "WORKSPACE_MEMBER", []string{"token_id"}},
		{"deployment token", depCmd(), "ws-2", "WORKSPACE_MEMBER", []string{"token_id"}},
		{"organization role", orgCmd(), "ws-1", "ORGANIZATION_OWNER", []string{"role"}},
		{"deployment role", orgCmd(), "ws-1", "DEPLOYMENT_ADMIN", []string{"role"}},
		{"unknown role", orgCmd(), "ws-1", "ADMIN", []string{"role"}},
		{"empty role", orgCmd(), "ws-1", "", []string{"role"}},
		{"invalid workspace id", orgCmd(), "ws.1", "WORKSPACE_MEMBER", []string{"workspace_id"}},
		{"empty workspace id", orgCmd(), "", "WORKSPACE_MEMBER", []string{"workspace_id"}},
		{"everything wrong", wsCmd(), "*", "ORGANIZATION_OWNER", []string{"token_id", "workspace_id", "role"}},
	}
	for _, tc := range rejects {
		t.Run("rejects "+tc.name, func(t *testing.T) {
			tok, _, _ := mustCreate(t, tc.create)
			before := tok.Clone()
			e, changed, err := tok.Assign(tc.ws, tc.role, envAt(t0.Add(time.Minute)))
			if err == nil {
				t.Fatal("Assign succeeded")
			}
			wantProblems(t, err, tc.fields...)
			if changed || e.Type != "" {
				t.Errorf("failed Assign: changed=%v event=%+v", changed, e)
			}
			assertSameToken(t, before, tok)
		})
	}
}

func TestUnassign(t *testing.T) {
	t.Run("removes an assignment", func(t *testing.T) {
		tok, _, _ := mustCreate(t, orgCmd())
		for ws, role := range map[string]string{"ws-1": "WORKSPACE_OPERATOR", "ws-2": "WORKSPACE_MEMBER"} {
			if _, _, err := tok.Assign(ws, role, envAt(t0)); err != nil {
				t.Fatal(err)
			}
		}
		at := t0.Add(time.Hour)
		e, err := tok.Unassign("ws-1", envAt(at))
		if err != nil {
			t.Fatalf("Unassign: %v", err)
		}
		want := domain.UnassignedData{WorkspaceID: "ws-1", PreviousRole: domain.RoleWorkspaceOperator}
		if e.Type != domain.TokenUnassigned || e.Version != 4 || e.Data != want || !e.OccurredAt.Equal(at) {
			t.Errorf("event = %s v%d %+v at %v, want TokenUnassigned v4 %+v at %v", e.Type, e.Version, e.Data, e.OccurredAt, want, at)
		}
		if _, ok := tok.WorkspaceRole("ws-1"); ok {
			t.Error("token still holds a role in ws-1")
		}
		if got, want := tok.WorkspaceRoles(), map[string]domain.Role{"ws-2": domain.RoleWorkspaceMember}; !maps.Equal(got, want) {
			t.Errorf("WorkspaceRoles = %v, want %v", got, want)
		}

		// Unassigning it again is a state error, not a silent success.
		before := tok.Clone()
		_, err = tok.Unassign("ws-1", envAt(at))
		var se *domain.StateError
		if !errors.As(err, &se) || se.Field != "workspace_id" {
			t.Errorf("second Unassign error = %v (%T), want *StateError on workspace_id", err, err)
		}
		assertSameToken(t, before, tok)
	})

	tests := []struct {
		name      string
		create    domain.CreateToken
		ws        string
		wantState bool     // *StateError on workspace_id
		fields    []string // else *ValidationError on these; nil: any error
	}{
		{"never assigned", orgCmd(), "ws-9", true, nil},
		{"workspace token's own workspace", wsCmd(), "ws-1", false, nil},
		{"invalid workspace id", orgCmd(), "ws.1", false, []string{"workspace_id"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, _, _ := mustCreate(t, tc.create)
			before := tok.Clone()
			_, err := tok.Unassign(tc.ws, envAt(t0))
			if err == nil {
				t.Fatal("Unassign succeeded")
			}
			if tc.wantState {
				var se *domain.StateError
				if !errors.As(err, &se) {
					t.Fatalf("error = %v (%T), want *domain.StateError", err, err)
				}
				if se.Field != "workspace_id" || se.Rule == "" {
					t.Errorf("StateError = %+v, want field workspace_id and a rule", se)
				}
			} else if tc.fields != nil {
				wantProblems(t, err, tc.fields...)
			}
			assertSameToken(t, before, tok)
		})
	}
}

func TestDelete(t *testing.T) {
	commands := []struct {
		name string
		run  func(tok *domain.Token, env domain.Env) error
	}{
		{"Update", func(tok *domain.Token, env domain.Env) error {
			_, _, err := tok.Update(domain.UpdateToken{Name: strPtr("new")}, env)
			return err
		}},
		{"Update with nothing", func(tok *domain.Token, env domain.Env) error {
			_, _, err := tok.Update(domain.UpdateToken{}, env)
			return err
		}},
		{"Rotate", func(tok *domain.Token, env domain.Env) error {
			_, s, err := tok.Rotate(env)
			if !s.IsZero() {
				return errors.New("a secret was issued")
			}
			return err
		}},
		{"Assign", func(tok *domain.Token, env domain.Env) error {
			_, _, err := tok.Assign("ws-2", "WORKSPACE_MEMBER", env)
			return err
		}},
		{"Unassign", func(tok *domain.Token, env domain.Env) error {
			_, err := tok.Unassign("ws-1", env)
			return err
		}},
		{"Delete", func(tok *domain.Token, env domain.Env) error {
			_, err := tok.Delete(env)
			return err
		}},
	}
	for _, cmd := range commands {
		t.Run(cmd.name+" after Delete", func(t *testing.T) {
			tok, _, _ := mustCreate(t, orgCmd())
			if _, _, err := tok.Assign("ws-1", "WORKSPACE_MEMBER", envAt(t0)); err != nil {
				t.Fatal(err)
			}
			at := t0.Add(time.Hour)
			e, err := tok.Delete(envAt(at))
			if err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if e.Type != domain.TokenDeleted || e.Version != 3 || e.Data != (domain.DeletedData{}) {
				t.Errorf("event = %s v%d %#v, want TokenDeleted v3", e.Type, e.Version, e.Data)
			}
			if !tok.Deleted() || !tok.DeletedAt().Equal(at) {
				t.Errorf("Deleted %v DeletedAt %v, want true, %v", tok.Deleted(), tok.DeletedAt(), at)
			}
			if got := tok.Status(at); got != domain.StatusDeleted {
				t.Errorf("Status = %q, want deleted", got)
			}
			before := tok.Clone()
			err = cmd.run(tok, envAt(at.Add(time.Minute)))
			if !errors.Is(err, domain.ErrDeleted) {
				t.Errorf("%s on a deleted token: error = %v, want ErrDeleted", cmd.name, err)
			}
			assertSameToken(t, before, tok)
		})
	}
}

func TestStatus(t *testing.T) {
	expiring, _, _ := mustCreate(t, func() domain.CreateToken { c := wsCmd(); c.ExpirationDays = intPtr(1); return c }())
	forever, _, _ := mustCreate(t, orgCmd())
	deleted, _, _ := mustCreate(t, orgCmd())
	if _, err := deleted.Delete(envAt(t0.Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	expiredThenDeleted, _, _ := mustCreate(t, func() domain.CreateToken { c := orgCmd(); c.ExpirationDays = intPtr(1); return c }())
	if _, err := expiredThenDeleted.Delete(envAt(t0.Add(3 * day))); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		tok  *domain.Token
		at   time.Time
		want domain.Status
	}{
		{"at creation", expiring, t0, domain.StatusActive},
		{"one nanosecond before expiry", expiring, t0.Add(day - time.Nanosecond), domain.StatusActive},
		{"exactly at expiry", expiring, t0.Add(day), domain.StatusExpired},
		{"after expiry", expiring, t0.Add(30 * day), domain.StatusExpired},
		{"expiry in another time zone", expiring, t0.Add(day).In(time.FixedZone("X", 5*3600)), domain.StatusExpired},
		{"never-expiring far future", forever, t0.Add(100 * 365 * day), domain.StatusActive},
		{"deleted", deleted, t0.Add(2 * time.Hour), domain.StatusDeleted},
		{"deleted, asked about a time before deletion", deleted, t0, domain.StatusDeleted},
		{"deleted after expiry", expiredThenDeleted, t0.Add(10 * day), domain.StatusDeleted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.tok.Status(tc.at); got != tc.want {
				t.Errorf("Status(%v) = %q, want %q", tc.at, got, tc.want)
			}
		})
	}
}

func TestCloneIsIndependent(t *testing.T) {
	tok, _, _ := mustCreate(t, orgCmd())
	if _, _, err := tok.Assign("ws-1", "WORKSPACE_MEMBER", envAt(t0)); err != nil {
		t.Fatal(err)
	}
	c := tok.Clone()
	if _, _, err := c.Assign("ws-2", "WORKSPACE_OWNER", envAt(t0)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Update(domain.UpdateToken{Name: strPtr("clone")}, envAt(t0)); err != nil {
		t.Fatal(err)
	}
	if _, ok := tok.WorkspaceRole("ws-2"); ok || tok.Name() != "ci bot" || tok.Version() != 2 {
		t.Errorf("commands on a clone changed the original: roles %v name %q version %d", tok.WorkspaceRoles(), tok.Name(), tok.Version())
	}
}

// history runs a realistic sequence of commands and returns the live token with
// every event it produced.
func history(t *testing.T) (*domain.Token, []domain.Event) {
	t.Helper()
	tok, e, _, err := domain.Create(domain.CreateToken{
		OrganizationID: "org-1", Scope: "ORGANIZATION", Name: "ci", Description: "first",
		ExpirationDays: intPtr(90),
	}, seededEnv(t0, 1))
	if err != nil {
		t.Fatal(err)
	}
	events := []domain.Event{e}
	add := func(e domain.Event, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		events = append(events, e)
	}
	addChanged := func(e domain.Event, changed bool, err error) {
		t.Helper()
		if err == nil && !changed {
			t.Fatal("command unexpectedly changed nothing")
		}
		add(e, err)
	}
	addRotated := func(e domain.Event, _ domain.Secret, err error) { t.Helper(); add(e, err) }

	addChanged(tok.Update(domain.UpdateToken{Name: strPtr("ci-2"), Description: strPtr(""), Role: strPtr("ORGANIZATION_OWNER")}, seededEnv(t0.Add(1*time.Hour), 2)))
	addChanged(tok.Assign("ws-1", "WORKSPACE_OWNER", seededEnv(t0.Add(2*time.Hour), 3)))
	addChanged(tok.Assign("ws-2", "WORKSPACE_MEMBER", seededEnv(t0.Add(3*time.Hour), 4)))
	addChanged(tok.Assign("ws-1", "WORKSPACE_ACCESSOR", seededEnv(t0.Add(4*time.Hour), 5)))
	addRotated(tok.Rotate(seededEnv(t0.Add(20*day), 6)))
	add(tok.Unassign("ws-2", seededEnv(t0.Add(21*day), 7)))
	addChanged(tok.Update(domain.UpdateToken{Description: strPtr("second")}, seededEnv(t0.Add(22*day), 8)))
	addRotated(tok.Rotate(seededEnv(t0.Add(23*day), 9)))
	return tok, events
}

func TestReplay(t *testing.T) {
	live, events := history(t)
	if len(events) != 9 || live.Version() != 9 {
		t.Fatalf("history: %d events, version %d; want 9, 9", len(events), live.Version())
	}
	for i, e := range events {
		if e.Version != uint64(i+1) {
			t.Fatalf("event %d has version %d", i, e.Version)
		}
	}

	t.Run("Replay", func(t *testing.T) {
		replayed, err := domain.Replay(events)
		if err != nil {
			t.Fatalf("Replay: %v", err)
		}
		assertSameToken(t, live, replayed)
	})

	t.Run("NewFromCreated then Apply", func(t *testing.T) {
		tok, err := domain.NewFromCreated(events[0])
		if err != nil {
			t.Fatalf("NewFromCreated: %v", err)
		}
		for _, e := range events[1:] {
			if err := tok.Apply(e); err != nil {
				t.Fatalf("Apply(%s v%d): %v", e.Type, e.Version, err)
			}
		}
		assertSameToken(t, live, tok)
	})

	t.Run("after a JSON round trip", func(t *testing.T) {
		decoded := make([]domain.Event, len(events))
		for i, e := range events {
			b, err := json.Marshal(e)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &decoded[i]); err != nil {
				t.Fatalf("decode %s: %v", b, err)
			}
		}
		replayed, err := domain.Replay(decoded)
		if err != nil {
			t.Fatalf("Replay: %v", err)
		}
		assertSameToken(t, live, replayed)
	})

	t.Run("after delete", func(t *testing.T) {
		live := live.Clone()
		e, err := live.Delete(envAt(t0.Add(30 * day)))
		if err != nil {
			t.Fatal(err)
		}
		replayed, err := domain.Replay(append(slices.Clone(events), e))
		if err != nil {
			t.Fatal(err)
		}
		assertSameToken(t, live, replayed)
		if _, _, err := replayed.Rotate(envAt(t0.Add(31 * day))); !errors.Is(err, domain.ErrDeleted) {
			t.Errorf("Rotate on a replayed deleted token: %v, want ErrDeleted", err)
		}
	})

	t.Run("prefix of the history", func(t *testing.T) {
		// Replaying the first three events gives the token as it was then.
		replayed, err := domain.Replay(events[:3])
		if err != nil {
			t.Fatal(err)
		}
		if replayed.Version() != 3 || replayed.Name() != "ci-2" || replayed.Description() != "" ||
			replayed.Role() != domain.RoleOrganizationOwner || !maps.Equal(replayed.WorkspaceRoles(), map[string]domain.Role{"ws-1": domain.RoleWorkspaceOwner}) {
			t.Errorf("partial replay: v%d %q %q %s %v", replayed.Version(), replayed.Name(), replayed.Description(), replayed.Role(), replayed.WorkspaceRoles())
		}
		if !replayed.ExpiresAt().Equal(t0.Add(90 * day)) {
			t.Errorf("ExpiresAt = %v, want %v", replayed.ExpiresAt(), t0.Add(90*day))
		}
	})

	t.Run("no events", func(t *testing.T) {
		if _, err := domain.Replay(nil); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("Replay(nil) = %v, want ErrNotFound", err)
		}
	})
}

func TestApplyRefuses(t *testing.T) {
	_, events := history(t)
	_, foreignCreated, _, err := domain.Create(orgCmd(), envAt(t0))
	if err != nil {
		t.Fatal(err)
	}

	withVersion := func(e domain.Event, v uint64) domain.Event { e.Version = v; return e }
	withToken := func(e domain.Event, id string) domain.Event { e.TokenID = id; return e }
	withOrg := func(e domain.Event, id string) domain.Event { e.OrganizationID = id; return e }

	tests := []struct {
		name   string
		upTo   int // events[:upTo] are applied first
		refuse domain.Event
	}{
		{"version skipped", 3, events[4]},
		{"version repeated", 3, events[2]},
		{"version zero", 3, withVersion(events[3], 0)},
		{"version far ahead", 3, withVersion(events[3], 99)},
		{"wrong token id", 3, withToken(events[3], foreignCreated.TokenID)},
		{"wrong organization", 3, withOrg(events[3], "org-2")},
		{"second TokenCreated", 3, withVersion(events[0], 4)},
		{"another token's TokenCreated", 1, withVersion(foreignCreated, 2)},
		{"history not starting with TokenCreated", 0, withVersion(events[1], 1)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.upTo == 0 {
				// An empty token with the right identity: Replay of a history
				// whose first event is not TokenCreated.
				if _, err := domain.Replay([]domain.Event{tc.refuse}); err == nil {
					t.Error("Replay accepted a history that does not start with TokenCreated")
				}
				if _, err := domain.NewFromCreated(tc.refuse); err == nil {
					t.Error("NewFromCreated accepted a non-TokenCreated event")
				}
				return
			}
			tok, err := domain.Replay(events[:tc.upTo])
			if err != nil {
				t.Fatal(err)
			}
			before := tok.Clone()
			if err := tok.Apply(tc.refuse); err == nil {
				t.Fatalf("Apply accepted %s v%d for %s/%s", tc.refuse.Type, tc.refuse.Version, tc.refuse.OrganizationID, tc.refuse.TokenID)
			}
			assertSameToken(t, before, tok)

			// Replay refuses the same history.
			if _, err := domain.Replay(append(slices.Clone(events[:tc.upTo]), tc.refuse)); err == nil {
				t.Error("Replay accepted the broken history")
			}
		})
	}
}
