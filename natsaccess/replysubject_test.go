package natsaccess_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/natsaccess"
	"github.com/tokenledger/tokenledger/natsaccess/natsaccesstest"
)

// ownPull gives an attacker a pull consumer in one of its own names.
func ownPull(t *testing.T, x *attacker) (natsaccess.Identity, string) {
	t.Helper()
	id, err := natsaccess.WhoAmI(ctx(t), x.nc)
	if err != nil {
		t.Fatal(err)
	}
	c, err := natsaccess.ClaimConsumer(ctx(t), x.js, "TOKENS", id, "", jetstream.ConsumerConfig{FilterSubject: id.Filter, AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	return id, c.CachedInfo().Name
}

// replyTo makes the server's JetStream answer a malformed pull request on
// the caller's own consumer (a 400 status, an empty body) on subject, the
// request's reply subject, which no permission checks. With the consumers
// in SERVICES, that answer was published inside SERVICES, where an empty
// body on a JetStream API subject is a delete; now the consumers are in
// MIRROR and the answer comes back into SERVICES, which has no JetStream.
func replyTo(t *testing.T, x *attacker, consumer, subject string) {
	t.Helper()
	if err := x.nc.PublishRequest(natsaccess.APIPrefix+".CONSUMER.MSG.NEXT.TOKENS."+consumer, subject, []byte("{")); err != nil {
		t.Fatal(err)
	}
	if err := x.nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestAReplySubjectCannotDeleteTheMirror: a token of another organization
// names $JS.API.STREAM.DELETE.TOKENS (and the services' own API's) as the
// reply subject of a pull request on its own consumer. Found by review: it
// deleted the services' mirror, for every service of every organization,
// while the consumers were in SERVICES.
func TestAReplySubjectCannotDeleteTheMirror(t *testing.T) {
	eachShape(t, func(t *testing.T, shape natsaccesstest.Options) {
		l := natsaccesstest.Start(t, shape)
		foreign := l.OtherOrg(t, "globex")
		x, err := connectAttacker(t, l.URL, natsaccess.Options(foreign)...)
		if err != nil {
			t.Fatal(err)
		}
		_, mine := ownPull(t, x)
		sjs := servicesJS(t, l)
		if _, err := sjs.Stream(ctx(t), "TOKENS"); err != nil {
			t.Fatalf("mirror before: %v", err)
		}
		// Its own publish is refused...
		x.refused("publish stream delete", "$JS.API.STREAM.DELETE.TOKENS", func() { _ = x.nc.Publish("$JS.API.STREAM.DELETE.TOKENS", nil) })
		// ...but the server publishes it for it.
		replyTo(t, x, mine, "$JS.API.STREAM.DELETE.TOKENS")
		replyTo(t, x, mine, natsaccess.APIPrefix+".STREAM.DELETE.TOKENS")
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if _, err := sjs.Stream(ctx(t), "TOKENS"); errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Errorf("the services' mirror was deleted by another organization's token")
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Log("mirror survived")
	})
}

// TestAReplySubjectCannotDeleteAnotherServicesDurable: a token of the same
// organization (which reads every token id of it) aims the same answer at
// another service's durable: its delete (found by review: it deleted it),
// and the ack of the event it is handling.
func TestAReplySubjectCannotDeleteAnotherServicesDurable(t *testing.T) {
	l := natsaccesstest.Start(t, natsaccesstest.Options{})
	_, secretA := l.Token(t, domain.CreateToken{Scope: "organization", Name: "svc-a", Role: string(domain.RoleOrganizationMember)})
	_, secretB := l.Token(t, domain.CreateToken{Scope: "workspace", WorkspaceID: "ws1", Name: "svc-b", Role: string(domain.RoleWorkspaceMember)})
	_, _, durable := withDurable(t, l, secretA, "cache")
	// A holds one event, unacked.
	b, err := durable.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var ack string
	for m := range b.Messages() {
		ack = m.Reply()
	}
	if ack == "" {
		t.Fatal("service A got no event to hold")
	}
	x, err := connectAttacker(t, l.URL, natsaccess.Options(secretB)...)
	if err != nil {
		t.Fatal(err)
	}
	_, mine := ownPull(t, x)
	target := "$JS.API.CONSUMER.DELETE.TOKENS." + durable.CachedInfo().Name
	x.refused("publish consumer delete", target, func() { _ = x.nc.Publish(target, nil) })
	replyTo(t, x, mine, target)
	replyTo(t, x, mine, natsaccess.APIPrefix+".CONSUMER.DELETE.TOKENS."+durable.CachedInfo().Name)
	replyTo(t, x, mine, ack)
	time.Sleep(500 * time.Millisecond)
	if info, err := durable.Info(ctx(t)); err == nil && info.NumAckPending != 1 {
		t.Errorf("service A's event was acked for it: %d pending", info.NumAckPending)
	}
	if _, err := durable.Info(ctx(t)); errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Errorf("a workspace token deleted another service's durable %s", durable.CachedInfo().Name)
	} else {
		t.Logf("durable survived: %v", err)
	}
}
