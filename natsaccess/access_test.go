package natsaccess_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/natsaccess"
	"github.com/tokenledger/tokenledger/natsaccess/natsaccesstest"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestAServiceReadsItsOrganizationWithItsToken(t *testing.T) {
	l := natsaccesstest.Start(t, natsaccesstest.Options{})
	_, secret := l.Token(t, domain.CreateToken{Scope: "organization", Name: "billing-cache", Role: string(domain.RoleOrganizationMember)})
	nc, err := l.Service(t, secret)
	if err != nil {
		t.Fatal(err)
	}
	id, err := natsaccess.WhoAmI(ctx(t), nc)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", id)
	js, _ := natsaccess.JetStream(nc)
	c, err := js.CreateOrUpdateConsumer(ctx(t), "TOKENS", jetstream.ConsumerConfig{Name: id.Consumers[0], FilterSubject: id.Filter, AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Fetch(10, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for m := range b.Messages() {
		n++
		t.Log(m.Subject())
	}
	if n != 2 {
		t.Fatalf("read %d events, want 2 (the owner's and the service's creation)", n)
	}
}
