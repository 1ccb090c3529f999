package httpapi_test

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
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

// history makes a varied history through the API: every scope, every event
// type, two workspaces, two acting tokens. It returns every secret the
// ledger handed out, and the second actor's id.
func (h *harness) history() (secrets []string, actor2 string) {
	h.t.Helper()
	ctx := ctxT(h.t)
	owner := h.client(h.owner)
	second := h.create(httpapi.CreateRequest{Scope: "ORGANIZATION", Name: "second owner", Role: "ORGANIZATION_OWNER"})
	secrets = append(secrets, h.owner, second.Secret)
	other := h.client(second.Secret)
	days := 30
	for i, req := range []httpapi.CreateRequest{
		{Scope: "ORGANIZATION", Name: "ci \"main\"", Role: "ORGANIZATION_MEMBER", ExpirationDays: &days},
		{Scope: "WORKSPACE", Name: "w1 token", WorkspaceID: "w1", Description: "line one\nline two"},
		{Scope: "WORKSPACE", Name: "w2 token", WorkspaceID: "w2"},
		{Scope: "DEPLOYMENT", Name: "deployer é", WorkspaceID: "w1", DeploymentID: "d1"},
		{Scope: "DEPLOYMENT", Name: "other deployer", WorkspaceID: "w2", DeploymentID: "d2"},
	} {
		c := owner
		if i%2 == 1 {
			c = other
		}
		tok, err := c.CreateToken(ctx, req, "")
		if err != nil {
			h.t.Fatal(err)
		}
		secrets = append(secrets, tok.Secret)
		if rotated, err := c.RotateToken(ctx, tok.ID); err != nil {
			h.t.Fatal(err)
		} else {
			secrets = append(secrets, rotated.Secret)
		}
		name := req.Name + " renamed"
		if _, err := c.UpdateToken(ctx, tok.ID, httpapi.UpdateRequest{Name: &name}); err != nil {
			h.t.Fatal(err)
		}
		if req.Scope == "ORGANIZATION" {
			for _, ws := range []string{"w1", "w2"} {
				if _, err := c.AssignToken(ctx, tok.ID, ws, "WORKSPACE_OPERATOR"); err != nil {
					h.t.Fatal(err)
				}
			}
			if _, err := c.UnassignToken(ctx, tok.ID, "w2"); err != nil {
				h.t.Fatal(err)
			}
		}
		if i == 2 || i == 4 {
			if _, err := c.DeleteToken(ctx, tok.ID); err != nil {
				h.t.Fatal(err)
			}
		}
	}
	// A rotated-away secret presented again: TokenReuseDetected, written in
	// the background, awaited so the history is complete on return.
	if status, _, _ := h.raw("GET", "/v1/tokens", secrets[2], nil, map[string]string{"User-Agent": "reuser"}); status != http.StatusUnauthorized {
		h.t.Fatalf("a rotated-away secret got %d", status)
	}
	h.awaitReuse(1)
	return secrets, second.ID
}

// export runs an export through the client (framed) and returns the file
// and the manifest.
func (h *harness) export(secret string, q url.Values) ([]byte, []byte, error) {
	var file bytes.Buffer
	manifest, err := h.client(secret).Export(ctxT(h.t), q, func(b []byte) error {
		file.Write(b)
		return nil
	}, nil)
	return file.Bytes(), manifest, err
}

func readJSONL(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var rows []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var row map[string]any
		if err := json.Unmarshal(sc.Bytes(), &row); err != nil {
			t.Fatalf("not a JSON line: %v: %s", err, sc.Bytes())
		}
		rows = append(rows, row)
	}
	return rows
}

// An owner exports the whole history, framed (as the CLI does) and plain
// (as any HTTP client does): both verify against the ledger's public key,
// hold one row per event in stream order, and hold no secret nor any
// stored secret hash.
func TestAuditExportIsCompleteSignedAndHoldsNoSecret(t *testing.T) {
	h := newHarness(t)
	secrets, _ := h.history()
	last := h.lastSeq()

	k, err := h.client("").AuditPublicKey(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := exporters.ParsePublicKey(k.PublicKey)
	if err != nil || !pub.Equal(h.key.Public()) {
		t.Fatalf("public key served: %+v, %v", k, err)
	}

	var exports [][]byte
	for _, format := range []string{"jsonl", "json", "parquet"} {
		file, manifest, err := h.export(h.owner, url.Values{"format": {format}})
		if err != nil {
			t.Fatalf("%s export: %v", format, err)
		}
		rep := exporters.Verify(bytes.NewReader(file), int64(len(file)), manifest, pub)
		if !rep.OK() {
			t.Fatalf("%s export does not verify: %v", format, rep.Err())
		}
		if rep.Rows != int64(last) || rep.Manifest.FirstSequence != 1 || rep.Manifest.LastSequence != last || rep.Manifest.StreamSequence != last {
			t.Fatalf("%s export: %d rows, sequences %d-%d, cut %d; the stream holds %d events",
				format, rep.Rows, rep.Manifest.FirstSequence, rep.Manifest.LastSequence, rep.Manifest.StreamSequence, last)
		}
		exports = append(exports, file, manifest)
	}
	rows := readJSONL(t, exports[0])
	for i, row := range rows {
		if row["sequence"] != float64(i+1) {
			t.Fatalf("row %d has sequence %v: want stream order", i+1, row["sequence"])
		}
		if got := readmeChainHash(row); got != row["hash"] {
			t.Fatalf("row %d: the README's recipe gives hash %s, the row says %v", i+1, got, row["hash"])
		}
	}

	// Plain: the file as the body, the manifest in a trailer.
	req, _ := http.NewRequest("GET", h.srv.URL+"/v1/audit/export?format=jsonl", nil)
	req.Header.Set("Authorization", "Bearer "+h.owner)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" || !strings.Contains(resp.Header.Get("Content-Disposition"), ".jsonl") {
		t.Fatalf("plain export: %d %v", resp.StatusCode, resp.Header)
	}
	sum := sha256.Sum256(body)
	if got := resp.Trailer.Get("Ledger-Export-SHA256"); got != hex.EncodeToString(sum[:]) || len(readJSONL(t, body)) != int(last) {
		t.Fatalf("plain export: trailer SHA-256 %q, body's %x, %d rows of %d", got, sum, len(readJSONL(t, body)), last)
	}
	exports = append(exports, body)

	// Neither a secret nor its stored hash, in any export or manifest.
	for _, s := range secrets {
		sum := domain.Hash(s)
		for _, needle := range []string{s, hex.EncodeToString(sum[:]), strings.ToUpper(hex.EncodeToString(sum[:])), base64.StdEncoding.EncodeToString(sum[:])} {
			for i, b := range exports {
				if bytes.Contains(b, []byte(needle)) {
					t.Fatalf("export %d holds a secret or its stored hash", i)
				}
			}
		}
	}
}

// readmeChainHash recomputes a row's hash by the recipe the README gives
// auditors, from the JSON row alone.
func readmeChainHash(row map[string]any) string {
	h := sha256.New()
	field := func(s string) {
		h.Write(binary.AppendUvarint(nil, uint64(len(s))))
		h.Write([]byte(s))
	}
	field("tokenledger-chain-v1")
	for _, col := range []string{"event_id", "event_type", "occurred_at", "organization_id", "workspace_id", "deployment_id",
		"token_id", "token_name", "scope", "role", "previous_role", "actor_token_id", "source_ip", "user_agent", "request_id",
		"fingerprint", "details", "prev_hash"} {
		v, _ := row[col].(string) // null: ""
		field(v)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// An export takes as long as it takes: the server's write timeout, meant for
// ordinary answers, does not cut it off.
// TestAnExportOutlastsTheServersWriteTimeout also carries a manifest of
// megabytes, sent in many frames.
func TestAnExportOutlastsTheServersWriteTimeout(t *testing.T) {
	h := newHarness(t)
	// Enough history (about 6 MB of JSON Lines) that the server is still
	// writing when the client stalls: socket buffers cannot hide it.
	for i := range 8000 {
		_, e, _, err := domain.Create(domain.CreateToken{OrganizationID: "acme", Scope: "organization", Name: "bulk " + strconv.Itoa(i), Description: strings.Repeat("x", 300)},
			domain.Env{Now: time.Now(), Rand: rand.Reader, Actor: domain.Actor{TokenID: h.ownerID}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.store.Append(ctxT(t), e, 0); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewUnstartedServer(httpapi.NewServer(h.ledger, slog.New(slog.NewTextHandler(io.Discard, nil)), nil))
	srv.Config.WriteTimeout = 200 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	slow := httpapi.NewClient(srv.URL, h.owner)
	first := true
	manifest, err := slow.Export(ctxT(t), url.Values{"format": {"jsonl"}}, func([]byte) error {
		if first {
			first = false
			time.Sleep(400 * time.Millisecond) // a slow disk, a slow link
		}
		return nil
	}, nil)
	if err != nil || len(manifest) == 0 {
		t.Fatalf("a slow export broke off: %v", err)
	}
	// The manifest (8,000 chains) came in many pieces, as the server made
	// it: joined, they are the whole signed manifest.
	m, err := exporters.OpenManifest(manifest, h.key.Public().(ed25519.PublicKey))
	if err != nil || len(manifest) < 1<<20 || m.Rows != int64(h.lastSeq()) || len(m.Chains) < 8000 {
		t.Fatalf("manifest of %d bytes: %d rows of %d, %d chains (%v)", len(manifest), m.Rows, h.lastSeq(), len(m.Chains), err)
	}
}

// Only an organization owner exports; bad parameters are refused before
// anything is read, each naming its field.
func TestAuditExportRefusals(t *testing.T) {
	h := newHarness(t)
	member := h.create(httpapi.CreateRequest{Scope: "ORGANIZATION", Name: "reader", Role: "ORGANIZATION_MEMBER"})
	if _, _, err := h.export(member.Secret, nil); err == nil {
		t.Fatal("an ORGANIZATION_MEMBER exported the audit log")
	} else if p, ok := err.(*httpapi.Problem); !ok || p.Status != 403 {
		t.Fatalf("member export: %v, want 403", err)
	}
	if _, _, err := h.export("tlo_"+strings.Repeat("A", 49), nil); err == nil {
		t.Fatal("an unknown token exported the audit log")
	} else if p, ok := err.(*httpapi.Problem); !ok || p.Status != 401 {
		t.Fatalf("unknown token export: %v, want 401", err)
	}
	before := h.lastSeq()
	for _, tc := range []struct {
		query string
		field string
	}{
		{"format=xml", "format"},
		{"since=yesterday", "since"},
		{"until=2026-13-01", "until"},
		{"since=1h&until=2h", "until"},
		{"type=TokenStolen", "type"},
		{"token=nope", "token"},
		{"workspace=../etc", "workspace"},
		{"after_sequence=-1", "after_sequence"},
		{"bogus=1", "bogus"},
	} {
		status, _, body := h.raw("GET", "/v1/audit/export?"+tc.query, h.owner, nil, nil)
		p := decodeProblem(t, body)
		if status != 400 || len(p.Errors) == 0 || p.Errors[0].Field != tc.field {
			t.Errorf("%s: %d %+v, want 400 naming %s", tc.query, status, p, tc.field)
		}
	}
	if after := h.lastSeq(); after != before {
		t.Fatalf("refused exports moved the stream from %d to %d", before, after)
	}
}

// Each filter gives exactly the rows it promises: checked against the whole
// export, filtered here by the plain meaning of each filter.
func TestAuditExportFiltersGiveExactlyTheirRows(t *testing.T) {
	h := newHarness(t)
	_, actor2 := h.history()
	file, _, err := h.export(h.owner, url.Values{"format": {"jsonl"}})
	if err != nil {
		t.Fatal(err)
	}
	all := readJSONL(t, file)
	if len(all) != int(h.lastSeq()) {
		t.Fatalf("whole export has %d rows, stream %d events", len(all), h.lastSeq())
	}
	str := func(r map[string]any, k string) string { s, _ := r[k].(string); return s }
	at := func(r map[string]any) time.Time {
		t2, err := time.Parse(time.RFC3339Nano, str(r, "occurred_at"))
		if err != nil {
			t.Fatal(err)
		}
		return t2
	}
	// Tokens and times taken from the history itself.
	var deployer, orgToken string
	for _, r := range all {
		if str(r, "scope") == "DEPLOYMENT" && deployer == "" {
			deployer = str(r, "token_id")
		}
		if str(r, "event_type") == "TokenAssigned" && orgToken == "" {
			orgToken = str(r, "token_id")
		}
	}
	mid := all[len(all)/2]
	third := all[len(all)/3]
	midAt, thirdAt := at(mid), at(third)
	midSeq := int(mid["sequence"].(float64))

	for _, tc := range []struct {
		name  string
		query url.Values
		keep  func(map[string]any) bool
	}{
		{"everything", url.Values{}, func(map[string]any) bool { return true }},
		{"one type", url.Values{"type": {"TokenRotated"}}, func(r map[string]any) bool { return str(r, "event_type") == "TokenRotated" }},
		{"reuse", url.Values{"type": {"TokenReuseDetected"}}, func(r map[string]any) bool { return str(r, "event_type") == "TokenReuseDetected" }},
		{"two types", url.Values{"type": {"TokenDeleted", "TokenUnassigned"}}, func(r map[string]any) bool {
			return str(r, "event_type") == "TokenDeleted" || str(r, "event_type") == "TokenUnassigned"
		}},
		{"one token", url.Values{"token": {deployer}}, func(r map[string]any) bool { return str(r, "token_id") == deployer }},
		{"token and type", url.Values{"token": {orgToken}, "type": {"TokenAssigned"}}, func(r map[string]any) bool {
			return str(r, "token_id") == orgToken && str(r, "event_type") == "TokenAssigned"
		}},
		{"workspace", url.Values{"workspace": {"w1"}}, func(r map[string]any) bool { return str(r, "workspace_id") == "w1" }},
		{"deployment", url.Values{"deployment": {"d2"}}, func(r map[string]any) bool { return str(r, "deployment_id") == "d2" }},
		{"actor", url.Values{"actor": {actor2}}, func(r map[string]any) bool { return str(r, "actor_token_id") == actor2 }},
		{"since", url.Values{"since": {midAt.Format(time.RFC3339Nano)}}, func(r map[string]any) bool { return !at(r).Before(midAt) }},
		{"until", url.Values{"until": {midAt.Format(time.RFC3339Nano)}}, func(r map[string]any) bool { return at(r).Before(midAt) }},
		{"since and until", url.Values{"since": {thirdAt.Format(time.RFC3339Nano)}, "until": {midAt.Format(time.RFC3339Nano)}},
			func(r map[string]any) bool { return !at(r).Before(thirdAt) && at(r).Before(midAt) }},
		{"since a duration ago", url.Values{"since": {"1h"}}, func(map[string]any) bool { return true }},
		{"until a duration ago", url.Values{"until": {"1h"}}, func(map[string]any) bool { return false }},
		{"after a sequence", url.Values{"after_sequence": {strconv.Itoa(midSeq)}}, func(r map[string]any) bool { return int(r["sequence"].(float64)) > midSeq }},
		{"after the end", url.Values{"after_sequence": {strconv.Itoa(len(all))}}, func(map[string]any) bool { return false }},
		{"workspace and type", url.Values{"workspace": {"w2"}, "type": {"TokenCreated"}}, func(r map[string]any) bool {
			return str(r, "workspace_id") == "w2" && str(r, "event_type") == "TokenCreated"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := url.Values{"format": {"jsonl"}}
			for k, v := range tc.query {
				q[k] = v
			}
			file, _, err := h.export(h.owner, q)
			if err != nil {
				t.Fatal(err)
			}
			got := readJSONL(t, file)
			var want []map[string]any
			for _, r := range all {
				if tc.keep(r) {
					want = append(want, r)
				}
			}
			seqs := func(rs []map[string]any) []float64 {
				var out []float64
				for _, r := range rs {
					out = append(out, r["sequence"].(float64))
				}
				return out
			}
			if !slices.Equal(seqs(got), seqs(want)) {
				t.Fatalf("rows %v, want %v", seqs(got), seqs(want))
			}
			if tc.name != "everything" && len(want) == len(all) && tc.name != "since a duration ago" {
				t.Fatalf("filter %v keeps every row: the test history does not exercise it", tc.query)
			}
		})
	}
}

// A nightly job continues from the last manifest's stream_sequence: no gap,
// no duplicate, even with events written in between.
func TestIncrementalExportsMissAndRepeatNothing(t *testing.T) {
	h := newHarness(t)
	h.history()
	var seen []float64
	after := "0"
	for round := range 3 {
		if round > 0 {
			h.create(httpapi.CreateRequest{Scope: "WORKSPACE", Name: "night " + strconv.Itoa(round), WorkspaceID: "w1"})
		}
		file, manifest, err := h.export(h.owner, url.Values{"format": {"jsonl"}, "after_sequence": {after}})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range readJSONL(t, file) {
			seen = append(seen, r["sequence"].(float64))
		}
		m, err := exporters.OpenManifest(manifest, h.key.Public().(ed25519.PublicKey))
		if err != nil {
			t.Fatal(err)
		}
		after = strconv.FormatUint(m.StreamSequence, 10)
	}
	last := h.lastSeq()
	if len(seen) != int(last) {
		t.Fatalf("three incremental exports gave %d rows; the stream holds %d events", len(seen), last)
	}
	for i, s := range seen {
		if s != float64(i+1) {
			t.Fatalf("row %d of the incremental exports has sequence %v", i+1, s)
		}
	}
}
