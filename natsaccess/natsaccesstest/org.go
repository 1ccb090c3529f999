package natsaccesstest

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// OtherOrg writes an ORGANIZATION_OWNER token of another organization into
// the stream by hand (the ledger makes a second organization no other way
// yet) and returns its secret once the view has it.
func (l *Ledger) OtherOrg(tb testing.TB, org string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, e, secret, err := domain.Create(domain.CreateToken{
		OrganizationID: org, Scope: string(domain.ScopeOrganization), Name: "owner", Role: string(domain.RoleOrganizationOwner),
	}, domain.Env{Now: time.Now(), Rand: rand.Reader, Actor: domain.Actor{TokenID: domain.SystemActor}})
	if err != nil {
		tb.Fatal(err)
	}
	ap, err := l.Store.Append(ctx, e, 0)
	if err != nil {
		tb.Fatal(err)
	}
	if err := l.View.WaitFor(ctx, ap.Sequence); err != nil {
		tb.Fatal(err)
	}
	return secret.Reveal()
}
