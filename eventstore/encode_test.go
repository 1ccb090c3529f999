package eventstore

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// awkwardEvents are the events sampleEvents does not make: every optional
// field empty or set, strings encoding/json escapes in each field, times in
// other zones and at the edges of what it will write, data it would refuse.
func awkwardEvents() []domain.Event {
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	exp := time.Date(2026, 6, 1, 0, 0, 0, 120, time.FixedZone("", 5*3600+30*60))
	s := func(v string) *string { return &v }
	base := domain.Event{ID: "e1", Type: domain.TokenUpdated, TokenID: "t1", OrganizationID: "o1", TokenName: "n",
		Scope: domain.ScopeWorkspace, Version: 2, OccurredAt: at, Actor: domain.Actor{TokenID: "a"}}
	with := func(f func(e *domain.Event)) domain.Event {
		e := base
		f(&e)
		return e
	}
	var out []domain.Event
	for _, str := range []string{"", "plain", "\x00\x1f\x7f", "<>&", "a<b", "a&b", "a>b", "\u2028\u2029", "\xff\xfe invalid", "tab\there", `"\`, "ümlaut", "🙂"} {
		out = append(out,
			with(func(e *domain.Event) {
				e.ID, e.TokenID, e.OrganizationID, e.TokenName = str, str, str, str
				e.WorkspaceID, e.DeploymentID = str, str
				e.Actor = domain.Actor{TokenID: str, RequestID: str, SourceIP: str, UserAgent: str}
				e.IdempotencyKey, e.RequestHash = str, str
				e.Data = domain.UpdatedData{Name: s(str), PreviousName: s(str), Description: s(str), PreviousDescription: s(str)}
			}),
			with(func(e *domain.Event) {
				e.Type = domain.TokenCreated
				e.Data = domain.CreatedData{Scope: domain.Scope(str), WorkspaceID: str, DeploymentID: str, Name: str,
					Description: str, Role: domain.Role(str), Fingerprint: str}
			}),
			with(func(e *domain.Event) {
				e.Type = domain.TokenAssigned
				e.Data = domain.AssignedData{WorkspaceID: str, Role: domain.Role(str), PreviousRole: domain.Role(str)}
			}),
			with(func(e *domain.Event) {
				e.Type = domain.TokenUnassigned
				e.Data = domain.UnassignedData{WorkspaceID: str, PreviousRole: domain.Role(str)}
			}),
			with(func(e *domain.Event) {
				e.Type = domain.TokenReuseDetected
				e.Data = domain.ReuseDetectedData{Fingerprint: str}
			}),
		)
	}
	out = append(out,
		// UpdatedData: each field alone, so the first one written varies.
		with(func(e *domain.Event) { e.Data = domain.UpdatedData{} }),
		with(func(e *domain.Event) { e.Data = domain.UpdatedData{PreviousName: s("x")} }),
		with(func(e *domain.Event) { e.Data = domain.UpdatedData{Description: s("")} }),
		with(func(e *domain.Event) { e.Data = domain.UpdatedData{PreviousDescription: s("d")} }),
		with(func(e *domain.Event) { e.Data = domain.UpdatedData{Role: "WORKSPACE_OWNER"} }),
		with(func(e *domain.Event) { e.Data = domain.UpdatedData{PreviousRole: "WORKSPACE_MEMBER"} }),
		with(func(e *domain.Event) {
			e.Data = domain.UpdatedData{Name: s("a"), Role: "WORKSPACE_OWNER", PreviousRole: "WORKSPACE_MEMBER"}
		}),
		with(func(e *domain.Event) {
			e.Type = domain.TokenCreated
			e.Data = domain.CreatedData{Scope: domain.ScopeDeployment, Name: "n", Role: "DEPLOYMENT_ADMIN",
				ExpirationDays: -3, ExpiresAt: &exp, SecretHash: domain.SecretHash{1, 2, 0xff}}
		}),
		with(func(e *domain.Event) {
			e.Type = domain.TokenRotated
			e.Data = domain.RotatedData{SecretHash: domain.SecretHash{9}, Fingerprint: "f", PreviousFingerprint: "p", ExpiresAt: &exp}
		}),
		with(func(e *domain.Event) { e.Type, e.Data = domain.TokenRotated, domain.RotatedData{} }),
		with(func(e *domain.Event) { e.Type, e.Data = domain.TokenDeleted, domain.DeletedData{} }),
		with(func(e *domain.Event) {
			e.Type, e.Data = domain.TokenReuseDetected, domain.ReuseDetectedData{Fingerprint: "0123456789abcdef", Count: 2600}
		}),
		with(func(e *domain.Event) {
			e.Type, e.Data = domain.TokenReuseDetected, domain.ReuseDetectedData{Fingerprint: "f", Count: ^uint64(0)}
		}),
		with(func(e *domain.Event) { e.PrevHash, e.Hash = domain.EventHash{0xab}, domain.EventHash{31: 1} }),
		with(func(e *domain.Event) { e.Hash = domain.EventHash{0xcd} }),
		with(func(e *domain.Event) { e.OccurredAt = time.Time{} }),
		with(func(e *domain.Event) { e.OccurredAt = time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.Local) }),
		with(func(e *domain.Event) { e.OccurredAt = at.In(time.FixedZone("odd", -(3*3600 + 25*60))) }),
		with(func(e *domain.Event) { e.Version = ^uint64(0) }),
		// What only encoding/json writes (or refuses): the fallback's cases.
		with(func(e *domain.Event) { e.Data = nil }),
		with(func(e *domain.Event) { e.Data = &domain.ReuseDetectedData{Fingerprint: "p"} }),
		with(func(e *domain.Event) { e.OccurredAt = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }),
		with(func(e *domain.Event) {
			late := time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)
			e.Type, e.Data = domain.TokenRotated, domain.RotatedData{ExpiresAt: &late}
		}),
	)
	return out
}

func TestEncodeEventMatchesEncodingJSON(t *testing.T) {
	events := append(sampleEvents(t, 2000), awkwardEvents()...)
	for _, e := range events {
		want, werr := json.Marshal(e)
		got, err := encodeEvent(e)
		if (err == nil) != (werr == nil) {
			t.Fatalf("event %#v: encodeEvent error %v, encoding/json error %v", e, err, werr)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("event %#v:\nencodeEvent   %s\nencoding/json %s", e, got, want)
		}
	}
	// The fast path must be the one taken for what the ledger writes, or
	// this encoder is only a slower json.Marshal.
	for _, e := range sampleEvents(t, 200) {
		if _, ok := appendEvent(nil, e); !ok {
			t.Fatalf("a ledger event went to encoding/json: %#v", e)
		}
	}
}

// FuzzEncodeEvent puts arbitrary strings, numbers and times in every kind of
// field and checks the bytes against encoding/json's.
func FuzzEncodeEvent(f *testing.F) {
	f.Add("e1", "name", "<b>&", "\u2028", int64(0), uint64(1), 5, 0)
	f.Add("\xff", "", "ok", "\x00", int64(-62135596800), uint64(0), 0, 330)
	f.Add("x", "y", "z", "w", int64(253402300799), ^uint64(0), 2, -59)
	f.Fuzz(func(t *testing.T, id, name, desc, other string, unix int64, version uint64, kind, offsetMin int) {
		at := time.Unix(unix, int64(version%1e9)).In(time.FixedZone("", (offsetMin%(24*60))*60))
		e := domain.Event{ID: id, Type: domain.TokenCreated, TokenID: other, OrganizationID: id, TokenName: name,
			Scope: domain.Scope(other), WorkspaceID: desc, Version: version, OccurredAt: at,
			Actor: domain.Actor{TokenID: other, UserAgent: desc}, IdempotencyKey: name}
		switch ((kind % 4) + 4) % 4 {
		case 0:
			e.Data = domain.CreatedData{Name: name, Description: desc, Role: domain.Role(other), ExpirationDays: kind, ExpiresAt: &at, Fingerprint: other}
		case 1:
			e.Data = domain.UpdatedData{Name: &name, PreviousDescription: &desc, Role: domain.Role(other)}
		case 2:
			e.Data = domain.RotatedData{Fingerprint: name, PreviousFingerprint: desc, ExpiresAt: &at}
		case 3:
			e.Data = domain.AssignedData{WorkspaceID: desc, Role: domain.Role(name), PreviousRole: domain.Role(other)}
		}
		want, werr := json.Marshal(e)
		got, err := encodeEvent(e)
		if (err == nil) != (werr == nil) || !bytes.Equal(got, want) {
			t.Fatalf("encodeEvent %s (%v)\nencoding/json %s (%v)", got, err, want, werr)
		}
	})
}

// BenchmarkEncodeEvent compares the ledger's encoder with encoding/json on
// events like those the ledger writes (names with nothing to escape):
// go test -run '^$' -bench EncodeEvent ./eventstore
func BenchmarkEncodeEvent(b *testing.B) {
	var events []domain.Event
	for _, e := range sampleEvents(b, 3000) {
		if j, _ := json.Marshal(e); !bytes.ContainsRune(j, '\\') {
			events = append(events, e)
		}
	}
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := json.Marshal(events[i%len(events)]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encodeEvent", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := encodeEvent(events[i%len(events)]); err != nil {
				b.Fatal(err)
			}
		}
	})
}
