package app_test

import (
	"errors"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/exporters"
)

// exportParams are the parameters ParseExportQuery reads; type may repeat.
var exportParams = []string{"format", "since", "until", "type", "token", "workspace", "deployment", "actor", "after_sequence"}

// FuzzParseExportQuery reads URL queries as GET /v1/audit/export gets them.
// A refusal is a ValidationError whose every problem names a parameter that
// was given; an accepted query applies every non-empty parameter it was given,
// exactly as given, and is consistent (a known format, known and distinct
// types, since before until). Run it with
//
//	go test -run '^$' -fuzz '^FuzzParseExportQuery$' ./app
func FuzzParseExportQuery(f *testing.F) {
	for _, q := range []string{
		"",
		"format=jsonl",
		"format=json&since=24h&until=1h",
		"format=parquet&since=2026-01-02T15:04:05Z&until=2026-01-03T00:00:00.5+02:00",
		"since=30d",
		"since=36601d",
		"since=-1h",
		"since=1h&until=2h",
		"since=0d&until=0d",
		"since=2026-01-01T00:00:00Z&until=0001-01-01T00:00:00Z",
		"until=0001-01-01T00:00:00Z",
		"since=9999999999999999999d",
		"type=TokenCreated&type=TokenRotated&type=TokenCreated",
		"type=TokenStolen",
		"type=",
		"token=tok_abcdefghijklmnopqrstuvwxyz&actor=system",
		"actor=tok_abcdefghijklmnopqrstuvwxy1",
		"workspace=analytics&deployment=etl-prod",
		"workspace=..%2Fetc&deployment=%00",
		"after_sequence=18446744073709551615",
		"after_sequence=18446744073709551616",
		"after_sequence=-1",
		"format=xml&format=json&since=yesterday&token=nope",
		"format=JSON",
		"workspace=a&workspace=b",
		"%zz=1&since=1h",
	} {
		f.Add(q)
	}
	now := time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC)
	f.Fuzz(func(t *testing.T, raw string) {
		// The server reads r.URL.Query(), which keeps what parsed and drops
		// the rest.
		given, _ := url.ParseQuery(raw)
		calls := map[string]int{}
		q, err := app.ParseExportQuery(func(name string) []string { calls[name]++; return given[name] }, now)
		for name := range calls {
			if !slices.Contains(exportParams, name) {
				t.Fatalf("ParseExportQuery read parameter %q, which it does not document", name)
			}
		}
		if err != nil {
			var verr *domain.ValidationError
			if !errors.As(err, &verr) || len(verr.Problems) == 0 {
				t.Fatalf("%q: refused with %v, not a ValidationError naming parameters", raw, err)
			}
			for _, p := range verr.Problems {
				if len(given[p.Field]) == 0 || p.Rule == "" {
					t.Fatalf("%q: problem %+v does not name a parameter that was given, with a rule", raw, p)
				}
			}
			return
		}
		checkAcceptedExportQuery(t, raw, given, q, now)
	})
}

func checkAcceptedExportQuery(t *testing.T, raw string, given url.Values, q app.ExportQuery, now time.Time) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("%q accepted as %+v: "+format, append([]any{raw, q}, args...)...)
	}
	for _, name := range exportParams {
		if name != "type" && len(given[name]) > 1 {
			fail("%s given %d times", name, len(given[name]))
		}
	}
	// An empty value counts as absent: the query's zero value for it.
	one := given.Get
	if want := one("format"); !slices.Contains(exporters.Formats, q.Format) || (want != "" && string(q.Format) != want) || (want == "" && q.Format != exporters.FormatParquet) {
		fail("format %q", q.Format)
	}
	for _, m := range []struct {
		name string
		got  time.Time
	}{{"since", q.Since}, {"until", q.Until}} {
		v := one(m.name)
		switch {
		case v == "" && !m.got.IsZero():
			fail("%s not given but set", m.name)
		case v == "":
		case m.got.IsZero():
			fail("%s=%q given but unbounded", m.name, v)
		case m.got.Location() != time.UTC:
			fail("%s not in UTC", m.name)
		}
		if at, err := time.Parse(time.RFC3339Nano, v); err == nil && !at.Equal(m.got) {
			fail("%s=%q read as %s", m.name, v, m.got)
		} else if err != nil && v != "" && m.got.After(now) {
			fail("%s=%q, a duration back from now, is after now", m.name, v)
		}
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && !q.Since.Before(q.Until) {
		fail("since is not before until")
	}
	var wantTypes []domain.EventType
	for _, typ := range given["type"] {
		if !slices.Contains(domain.EventTypes, domain.EventType(typ)) {
			fail("unknown type %q", typ)
		}
		if !slices.Contains(wantTypes, domain.EventType(typ)) {
			wantTypes = append(wantTypes, domain.EventType(typ))
		}
	}
	if !slices.Equal(q.Types, wantTypes) {
		fail("types %v, want %v", q.Types, wantTypes)
	}
	for _, s := range []struct {
		name, got string
		ok        bool
	}{
		{"token", q.TokenID, domain.ValidTokenID(q.TokenID)},
		{"actor", q.ActorTokenID, domain.ValidTokenID(q.ActorTokenID) || q.ActorTokenID == domain.SystemActor},
		{"workspace", q.WorkspaceID, domain.ValidID(q.WorkspaceID)},
		{"deployment", q.DeploymentID, domain.ValidID(q.DeploymentID)},
	} {
		if s.got != one(s.name) || (s.got != "" && !s.ok) {
			fail("%s %q from %q", s.name, s.got, one(s.name))
		}
	}
	if v := one("after_sequence"); v != "" {
		if n, err := strconv.ParseUint(v, 10, 64); err != nil || n != q.AfterSequence {
			fail("after_sequence %d from %q", q.AfterSequence, v)
		}
	} else if q.AfterSequence != 0 {
		fail("after_sequence set but not given")
	}
}
