package httpapi_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/exporters"
	"github.com/tokenledger/tokenledger/httpapi"
)

// awaitReuse waits, with a deadline, until the ledger's reuse events stand
// for n tries and the view has caught up with the stream. A try dropped or
// an event failed ends the test. The tries after a source's first are
// written once an interval has passed: advance the clock first.
func (h *harness) awaitReuse(n uint64) {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := h.ledger.ReuseStats()
		if st.Dropped > 0 || st.Failed > 0 {
			h.t.Fatalf("reuse tries lost: %+v", st)
		}
		if st.RecordedTries >= n {
			break
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("only %d of %d reuse tries recorded after 20 s: %+v", st.RecordedTries, n, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := h.ledger.CatchUp(ctxT(h.t)); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) reuseEvents(id string) []httpapi.HistoryEvent {
	h.t.Helper()
	hist, err := h.client(h.owner).TokenHistory(ctxT(h.t), id)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []httpapi.HistoryEvent
	for _, e := range hist.Events {
		if e.EventType == domain.TokenReuseDetected {
			out = append(out, e)
		}
	}
	return out
}

// A rotated-away secret presented again is refused like any bad secret and
// recorded, with the tries' source, on the token's own history: the first
// try at once, the tries after it from that source in one event with their
// count once the interval is over; in `token history` and in an export that
// verifies. A secret that was never issued, and a deleted token's secret,
// record nothing.
func TestAReusedSecretIsRefusedAndRecordedWithItsCount(t *testing.T) {
	h := newHarness(t)
	c := h.client(h.owner)
	ctx := ctxT(t)
	victim := h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "ws1", Name: "leaky"})
	rotated, err := c.RotateToken(ctx, victim.ID)
	if err != nil {
		t.Fatal(err)
	}
	gone := h.create(httpapi.CreateRequest{Scope: "deployment", WorkspaceID: "ws1", DeploymentID: "d1", Name: "gone"})
	goneRotated, err := c.RotateToken(ctx, gone.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteToken(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}
	never, err := domain.NewSecret(domain.ScopeWorkspace, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, _, want401 := h.raw("GET", "/v1/tokens", never.Reveal(), nil, nil)

	// Three attempts with the old secret, on three endpoints.
	attempts := []struct{ method, path, agent, request string }{
		{"GET", "/v1/tokens", "leaked-client/1", "reuse-1"},
		{"GET", "/v1/tokens/" + victim.ID, "leaked-client/2", "reuse-2"},
		{"POST", "/v1/tokens/" + victim.ID + "/rotate", "leaked-client/3", "reuse-3"},
	}
	for _, a := range attempts {
		status, _, body := h.raw(a.method, a.path, victim.Secret, nil, map[string]string{"User-Agent": a.agent, "X-Request-Id": a.request})
		if status != http.StatusUnauthorized || !bytes.Equal(body, want401) {
			t.Fatalf("%s %s with the rotated-away secret: %d %s\nwant the 401 of a never-issued secret: %s", a.method, a.path, status, body, want401)
		}
	}
	// Neither a never-issued secret nor a deleted token's (current) secret
	// is a reuse. Tries are counted as Authenticate sees them, so the count
	// says at once that none was made.
	for _, s := range []string{never.Reveal(), goneRotated.Secret} {
		if status, _, body := h.raw("GET", "/v1/tokens", s, nil, nil); status != http.StatusUnauthorized || !bytes.Equal(body, want401) {
			t.Fatalf("bad secret: %d %s", status, body)
		}
	}
	if q := h.ledger.ReuseStats().Tries; q != 3 {
		t.Fatalf("%d reuse tries counted after 3 reuses, a never-issued and a deleted token's secret; want 3", q)
	}
	// A secret rotated away before its token was deleted is still a reuse,
	// recorded on the deleted token.
	if status, _, _ := h.raw("GET", "/v1/tokens", gone.Secret, nil, map[string]string{"User-Agent": "late"}); status != http.StatusUnauthorized {
		t.Fatalf("a deleted token's rotated-away secret: %d", status)
	}
	h.advance(time.Minute) // the interval is over: what is counted is written
	h.awaitReuse(4)

	fp := domain.Fingerprint(victim.Secret)
	events := h.reuseEvents(victim.ID)
	if len(events) == 0 || len(events) > 2 {
		t.Fatalf("%d TokenReuseDetected events for %d tries from one source in one interval; want the first try's and one for the rest", len(events), len(attempts))
	}
	var total uint64
	for i, e := range events {
		// The first event is the first try's (and any made before it was
		// written); the second the last try's, counting the rest.
		a := attempts[0]
		if i > 0 {
			a = attempts[len(attempts)-1]
		}
		if e.ActorTokenID != domain.SystemActor || e.SourceIP != "127.0.0.1" || e.UserAgent != a.agent || e.RequestID != a.request {
			t.Errorf("event %d: actor %q, source %q, agent %q, request %q; want system, 127.0.0.1, %q, %q", i, e.ActorTokenID, e.SourceIP, e.UserAgent, e.RequestID, a.agent, a.request)
		}
		count := uint64(1)
		if c, ok := e.Data["count"]; ok {
			n, err := strconv.ParseUint(fmt.Sprint(c), 10, 64)
			if err != nil || n < 2 {
				t.Fatalf("event %d: count %v", i, c)
			}
			count = n
		}
		total += count
		if e.Data["fingerprint"] != fp || e.Version != uint64(3+i) {
			t.Errorf("event %d: version %d, data %v; want version %d and the old secret's fingerprint %s", i, e.Version, e.Data, 3+i, fp)
		}
	}
	if total != uint64(len(attempts)) {
		t.Fatalf("the events stand for %d tries, want %d", total, len(attempts))
	}
	if late := h.reuseEvents(gone.ID); len(late) != 1 || late[0].UserAgent != "late" || late[0].Data["fingerprint"] != domain.Fingerprint(gone.Secret) {
		t.Fatalf("deleted token's reuse events: %+v", late)
	}
	// The token itself is as it was: its new secret works, nothing but its
	// version moved.
	now, err := h.client(rotated.Secret).GetToken(ctx, victim.ID)
	if err != nil {
		t.Fatalf("the new secret after the reuses: %v", err)
	}
	if now.Version != rotated.Version+uint64(len(events)) || !now.UpdatedAt.Equal(rotated.UpdatedAt) || now.Fingerprint != rotated.Fingerprint {
		t.Fatalf("after the reuses: version %d (want %d), updated %v (want %v)", now.Version, rotated.Version+uint64(len(events)), now.UpdatedAt, rotated.UpdatedAt)
	}

	// The export holds them, with their sources, and verifies.
	file, manifest, err := h.export(h.owner, url.Values{"format": {"jsonl"}})
	if err != nil {
		t.Fatal(err)
	}
	if rep := exporters.Verify(bytes.NewReader(file), int64(len(file)), manifest, h.key.Public().(ed25519.PublicKey)); !rep.OK() {
		t.Fatalf("the export does not verify: %v", rep.Err())
	}
	var agents []string
	for _, row := range readJSONL(t, file) {
		if row["event_type"] != string(domain.TokenReuseDetected) {
			continue
		}
		if row["token_id"] == victim.ID {
			if row["fingerprint"] != fp || row["source_ip"] != "127.0.0.1" || row["actor_token_id"] != domain.SystemActor {
				t.Errorf("export row %v", row)
			}
		}
		agents = append(agents, fmt.Sprint(row["user_agent"]))
	}
	want := "late,leaked-client/1"
	if len(events) == 2 {
		want = "late,leaked-client/1,leaked-client/3"
	}
	slices.Sort(agents)
	if got := strings.Join(agents, ","); got != want {
		t.Fatalf("the export's TokenReuseDetected rows come from %s, want %s", got, want)
	}
	for _, s := range []string{victim.Secret, gone.Secret} {
		sum := domain.Hash(s)
		if bytes.Contains(file, []byte(s)) || bytes.Contains(file, []byte(sum.String())) {
			t.Fatal("the export holds a reused secret or its hash")
		}
	}
}

// last_used_at moves when a token authenticates a request, at most every
// 30 s, and never through an event.
func TestLastUsedAtFollowsUseWithoutAnEvent(t *testing.T) {
	h := newHarness(t)
	owner := h.client(h.owner)
	ctx := ctxT(t)
	tok := h.create(httpapi.CreateRequest{Scope: "workspace", WorkspaceID: "ws1", Name: "busy"})
	lastUsed := func() *time.Time {
		t.Helper()
		got, err := owner.GetToken(ctx, tok.ID)
		if err != nil {
			t.Fatal(err)
		}
		return got.LastUsedAt
	}
	if lastUsed() != nil {
		t.Fatal("an unused token has a last_used_at")
	}
	// Verifying a token's secret is not a use of the token.
	if _, err := owner.Verify(ctx, tok.Secret); err != nil {
		t.Fatal(err)
	}
	if lastUsed() != nil {
		t.Fatal("POST /v1/verify counted as a use of the token verified")
	}
	seq := h.lastSeq()
	use := func() time.Time {
		t.Helper()
		at := h.now().Truncate(time.Second)
		if _, err := h.client(tok.Secret).GetToken(ctx, tok.ID); err != nil {
			t.Fatal(err)
		}
		return at
	}

	first := use()
	got := lastUsed()
	if got == nil || got.Before(first) || got.After(h.now()) {
		t.Fatalf("after a use at %v, last_used_at = %v", first, got)
	}
	was := *got
	h.advance(20 * time.Second)
	use()
	if got := lastUsed(); got == nil || !got.Equal(was) {
		t.Fatalf("a second use 20 s later moved last_used_at from %v to %v", was, got)
	}
	h.advance(15 * time.Second)
	second := use()
	if got := lastUsed(); got == nil || got.Before(second) || !got.After(was) {
		t.Fatalf("a use 35 s after the first left last_used_at at %v (was %v)", got, was)
	}
	list, err := owner.ListTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range list.Tokens {
		if l.ID == tok.ID && (l.LastUsedAt == nil || !l.LastUsedAt.Equal(*lastUsed())) {
			t.Fatalf("list says last used %v, show %v", l.LastUsedAt, lastUsed())
		}
	}
	if after := h.lastSeq(); after != seq {
		t.Fatalf("using a token wrote events: stream sequence %d -> %d", seq, after)
	}
	// The JSON field is there, null or a time, for every token.
	_, _, body := h.raw("GET", "/v1/tokens", h.owner, nil, nil)
	if n := strings.Count(string(body), `"last_used_at":`); n != len(list.Tokens) {
		t.Fatalf("%d last_used_at fields for %d tokens: %s", n, len(list.Tokens), body)
	}
}
