package natsaccess_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/natsaccess"
	"github.com/tokenledger/tokenledger/natsaccess/natsaccesstest"
)

// Permissions bound what a service publishes and subscribes to, not where
// a push consumer delivers: these tests make one deliver an organization's
// events to another organization's inbox, or empty bodies to the JetStream
// API. The revoker's consumer sweep deletes push consumers (and the
// consumers of tokens no longer active) within about a second.

// servicesJS is JetStream on the services' account, as the ledger reaches it.
func servicesJS(t *testing.T, l *natsaccesstest.Ledger) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.NewWithAPIPrefix(l.Conns.Ledger, natsaccess.ServicesAPIPrefix)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// pushTo creates, through the create subject its token is allowed, a push
// consumer in one of its own names that delivers what the token reads to
// deliver: any subject of SERVICES, which the server never checks against
// the creator's permissions.
func pushTo(t *testing.T, x *attacker, id natsaccess.Identity, name, deliver string, headersOnly bool) {
	t.Helper()
	req, _ := json.Marshal(map[string]any{"stream_name": "TOKENS", "config": map[string]any{
		"name": name, "durable_name": name, "deliver_subject": deliver, "filter_subject": id.Filter,
		"ack_policy": "explicit", "ack_wait": int64(time.Second), "max_deliver": 1, "deliver_policy": "all", "headers_only": headersOnly,
	}})
	m, err := x.nc.Request(fmt.Sprintf("%s.CONSUMER.CREATE.TOKENS.%s.%s", natsaccess.APIPrefix, name, id.Filter), req, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var resp struct {
		Error *struct{ Description string } `json:"error"`
	}
	if json.Unmarshal(m.Data, &resp) != nil || resp.Error != nil {
		t.Fatalf("push consumer: %s", m.Data)
	}
}

// TestAPushConsumerIsDeletedAndLeaksNothing: an organization token of acme,
// held briefly (stolen, or a leaver's), makes a push consumer that delivers
// acme's events into the inbox of a token of ANOTHER organization (globex).
// acme deletes the token; the revoker cuts its connection, but the
// consumer stays and globex keeps reading acme's new events for good.
func TestAPushConsumerIsDeletedAndLeaksNothing(t *testing.T) {
	l := natsaccesstest.Start(t, natsaccesstest.Options{})
	stolen, stolenSecret := l.Token(t, domain.CreateToken{Scope: "organization", Name: "svc", Role: string(domain.RoleOrganizationMember)})
	globex := l.OtherOrg(t, "globex")

	g, err := connectAttacker(t, l.URL, natsaccess.Options(globex)...)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 100)
	if _, err := g.nc.Subscribe(natsaccess.InboxPrefix(globex)+".acme", func(m *nats.Msg) { got <- m.Subject }); err != nil {
		t.Fatal(err)
	}
	if err := g.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	x, id := service(t, l, stolenSecret)
	pushTo(t, x, id, id.Consumers[0], natsaccess.InboxPrefix(globex)+".acme", false)

	if _, err := l.App.DeleteToken(ctx(t), l.Owner, stolen.ID(), ""); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !x.nc.IsClosed() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !x.nc.IsClosed() {
		t.Fatal("the deleted token's connection was not cut")
	}
	time.Sleep(6 * time.Second) // well past the revoker's ~5 s promise
	for len(got) > 0 {
		<-got
	}
	// acme goes on: a new token, well after the deletion.
	fresh, _ := l.Token(t, domain.CreateToken{Scope: "organization", Name: "after-delete", Role: string(domain.RoleOrganizationMember)})
	select {
	case subj := <-got:
		t.Errorf("globex's connection read acme's %s, 6 s after the token that set it up was deleted (new token %s)", subj, fresh.ID())
	case <-time.After(3 * time.Second):
		t.Log("nothing leaked")
	}
	if info := servicesConsumerInfo(t, l, id.Consumers[0]); !strings.Contains(info, "not found") {
		t.Errorf("the deleted token's consumer %s still exists (and holds one of the %d consumers all services share)", id.Consumers[0], natsaccess.ServicesMaxConsumers)
	}
}

// TestAHeadersOnlyPushConsumerCannotDeleteTheMirror: a headers-only push consumer
// delivers empty bodies to $JS.API.STREAM.DELETE.TOKENS.
func TestAHeadersOnlyPushConsumerCannotDeleteTheMirror(t *testing.T) {
	l := natsaccesstest.Start(t, natsaccesstest.Options{})
	_, wsSecret := l.Token(t, domain.CreateToken{Scope: "workspace", WorkspaceID: "ws1", Name: "ws-svc", Role: string(domain.RoleWorkspaceMember)})
	x, id := service(t, l, wsSecret)
	pushTo(t, x, id, id.Consumers[0], "$JS.API.STREAM.DELETE.TOKENS", true)
	sjs := servicesJS(t, l)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := sjs.Stream(ctx(t), "TOKENS"); errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Errorf("a workspace token's push consumer deleted the services' mirror")
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("mirror survived; consumer: %s", servicesConsumerInfo(t, l, id.Consumers[0]))
}

// servicesConsumerInfo is the raw info of a consumer on the services' stream.
func servicesConsumerInfo(t *testing.T, l *natsaccesstest.Ledger, name string) string {
	t.Helper()
	m, err := l.Conns.Ledger.Request(natsaccess.ServicesAPIPrefix+".CONSUMER.INFO.TOKENS."+name, nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return string(m.Data)
}

// TestAMirrorThatIsDeletedIsMadeAgain: whatever deletes the services'
// mirror (see the README's known hole), the ledger makes it again within a
// sweep and services read again.
func TestAMirrorThatIsDeletedIsMadeAgain(t *testing.T) {
	l := natsaccesstest.Start(t, natsaccesstest.Options{})
	if err := servicesJS(t, l).DeleteStream(ctx(t), "TOKENS"); err != nil {
		t.Fatal(err)
	}
	_, secret := l.Token(t, domain.CreateToken{Scope: "organization", Name: "after", Role: string(domain.RoleOrganizationMember)})
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if s, err := servicesJS(t, l).Stream(ctx(t), "TOKENS"); err == nil && s.CachedInfo().State.Msgs >= 2 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	nc, err := l.Service(t, secret)
	if err != nil {
		t.Fatal(err)
	}
	id, err := natsaccess.WhoAmI(ctx(t), nc)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := natsaccess.JetStream(nc)
	if n := len(read(t, js, id)); n != 2 {
		t.Fatalf("after the mirror was made again a service read %d events, want 2", n)
	}
}
