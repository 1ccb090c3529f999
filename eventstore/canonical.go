package eventstore

import (
	"bytes"
	"encoding/hex"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/tokenledger/tokenledger/domain"
)

// canonical decodes an event written exactly as json.Marshal writes a
// domain.Event: its keys in struct order, optional ones omitted when empty,
// no whitespace, no escapes in strings. That is every event the ledger
// writes, and a linear scan of it is far cheaper than any general parser. It
// reports false at the first byte that differs from that shape, and the
// caller falls back to a general decoder; it never guesses.
func canonical(b []byte, seen map[string]string) (domain.Event, bool) {
	s := scan{b: b, seen: seen}
	var e domain.Event
	s.lit(`{"event_id":`)
	e.ID = s.str()
	s.lit(`,"event_type":`)
	e.Type = domain.EventType(s.known())
	s.lit(`,"token_id":`)
	e.TokenID = s.str()
	s.lit(`,"organization_id":`)
	e.OrganizationID = s.interned()
	s.lit(`,"token_name":`)
	e.TokenName = s.str()
	s.lit(`,"scope":`)
	e.Scope = domain.Scope(s.known())
	if s.key(`,"workspace_id":`) {
		e.WorkspaceID = s.interned()
	}
	if s.key(`,"deployment_id":`) {
		e.DeploymentID = s.interned()
	}
	s.lit(`,"version":`)
	e.Version = s.uint()
	s.lit(`,"occurred_at":`)
	e.OccurredAt = s.time()
	s.lit(`,"actor":{"actor_token_id":`)
	e.Actor.TokenID = s.interned()
	if s.key(`,"request_id":`) {
		e.Actor.RequestID = s.str()
	}
	if s.key(`,"source_ip":`) {
		e.Actor.SourceIP = s.interned()
	}
	if s.key(`,"user_agent":`) {
		e.Actor.UserAgent = s.interned()
	}
	s.lit(`}`)
	if s.key(`,"idempotency_key":`) {
		e.IdempotencyKey = s.str()
	}
	if s.key(`,"request_hash":`) {
		e.RequestHash = s.str()
	}
	s.lit(`,"data":{`)
	switch e.Type {
	case domain.TokenCreated:
		var d domain.CreatedData
		s.lit(`"scope":`)
		d.Scope = domain.Scope(s.known())
		if s.key(`,"workspace_id":`) {
			d.WorkspaceID = s.interned()
		}
		if s.key(`,"deployment_id":`) {
			d.DeploymentID = s.interned()
		}
		s.lit(`,"name":`)
		d.Name = s.str()
		if s.key(`,"description":`) {
			d.Description = s.str()
		}
		s.lit(`,"role":`)
		d.Role = domain.Role(s.known())
		if s.key(`,"expiration_days":`) {
			d.ExpirationDays = s.int()
		}
		if s.key(`,"expires_at":`) {
			t := s.time()
			d.ExpiresAt = &t
		}
		s.lit(`,"secret_hash":`)
		d.SecretHash = s.hash()
		s.lit(`,"fingerprint":`)
		d.Fingerprint = s.str()
		e.Data = d
	case domain.TokenUpdated:
		var d domain.UpdatedData
		sep := ""
		field := func(key string) bool {
			if s.key(sep + key) {
				sep = ","
				return true
			}
			return false
		}
		if field(`"name":`) {
			d.Name = s.strPtr()
		}
		if field(`"previous_name":`) {
			d.PreviousName = s.strPtr()
		}
		if field(`"description":`) {
			d.Description = s.strPtr()
		}
		if field(`"previous_description":`) {
			d.PreviousDescription = s.strPtr()
		}
		if field(`"role":`) {
			d.Role = domain.Role(s.known())
		}
		if field(`"previous_role":`) {
			d.PreviousRole = domain.Role(s.known())
		}
		e.Data = d
	case domain.TokenRotated:
		var d domain.RotatedData
		s.lit(`"secret_hash":`)
		d.SecretHash = s.hash()
		s.lit(`,"fingerprint":`)
		d.Fingerprint = s.str()
		s.lit(`,"previous_secret_hash":`)
		d.PreviousSecretHash = s.hash()
		s.lit(`,"previous_fingerprint":`)
		d.PreviousFingerprint = s.str()
		if s.key(`,"expires_at":`) {
			t := s.time()
			d.ExpiresAt = &t
		}
		e.Data = d
	case domain.TokenAssigned:
		var d domain.AssignedData
		s.lit(`"workspace_id":`)
		d.WorkspaceID = s.interned()
		s.lit(`,"role":`)
		d.Role = domain.Role(s.known())
		if s.key(`,"previous_role":`) {
			d.PreviousRole = domain.Role(s.known())
		}
		e.Data = d
	case domain.TokenUnassigned:
		var d domain.UnassignedData
		s.lit(`"workspace_id":`)
		d.WorkspaceID = s.interned()
		s.lit(`,"previous_role":`)
		d.PreviousRole = domain.Role(s.known())
		e.Data = d
	case domain.TokenDeleted:
		e.Data = domain.DeletedData{}
	case domain.TokenReuseDetected:
		var d domain.ReuseDetectedData
		s.lit(`"fingerprint":`)
		d.Fingerprint = s.str()
		if s.key(`,"count":`) {
			d.Count = s.uint()
		}
		e.Data = d
	default:
		return domain.Event{}, false
	}
	s.lit(`}`)
	if s.key(`,"prev_hash":`) {
		e.PrevHash = domain.EventHash(s.hash())
	}
	if s.key(`,"hash":`) {
		e.Hash = domain.EventHash(s.hash())
	}
	s.lit(`}`)
	if !s.ok() || s.i != len(s.b) {
		return domain.Event{}, false
	}
	return e, true
}

// scan walks the bytes; after the first misfit it stays failed.
type scan struct {
	b      []byte
	i      int
	failed bool
	seen   map[string]string
}

func (s *scan) ok() bool { return !s.failed }

func (s *scan) fail() { s.failed, s.i = true, len(s.b) }

func (s *scan) lit(l string) {
	if !s.key(l) {
		s.fail()
	}
}

// key consumes l if it comes next.
func (s *scan) key(l string) bool {
	if s.failed || !bytes.HasPrefix(s.b[s.i:], []byte(l)) {
		return false
	}
	s.i += len(l)
	return true
}

// raw returns the bytes of a string value, which must hold no escape.
func (s *scan) raw() []byte {
	if s.failed || s.i >= len(s.b) || s.b[s.i] != '"' {
		s.fail()
		return nil
	}
	rest := s.b[s.i+1:]
	end := bytes.IndexByte(rest, '"')
	// An escape, a control character or invalid UTF-8 (which encoding/json
	// would replace) is not the plain shape: let the general decoders read it.
	if end < 0 || bytes.IndexByte(rest[:end], '\\') >= 0 || !plainString(rest[:end]) {
		s.fail()
		return nil
	}
	s.i += end + 2
	return rest[:end]
}

func (s *scan) str() string { return string(s.raw()) }

func plainString(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c >= 0x80 {
			return utf8.Valid(b) && bytes.IndexFunc(b, func(r rune) bool { return r < 0x20 }) < 0
		}
	}
	return true
}

func (s *scan) strPtr() *string {
	v := s.str()
	return &v
}

func (s *scan) interned() string {
	b := s.raw()
	if v, ok := s.seen[string(b)]; ok {
		return v
	}
	v := string(b)
	s.seen[v] = v
	return v
}

func (s *scan) known() string {
	b := s.raw()
	if v, ok := knownValues[string(b)]; ok {
		return v
	}
	return string(b)
}

func (s *scan) uint() uint64 {
	j := s.i
	for j < len(s.b) && s.b[j] >= '0' && s.b[j] <= '9' {
		j++
	}
	n, err := strconv.ParseUint(string(s.b[s.i:j]), 10, 64)
	if err != nil || s.failed || (j-s.i > 1 && s.b[s.i] == '0') {
		s.fail()
		return 0
	}
	s.i = j
	return n
}

// int reads a number for an int field; one that does not fit is a misfit
// (encoding/json refuses it), never wrapped.
func (s *scan) int() int {
	n := s.uint()
	if n > math.MaxInt {
		s.fail()
		return 0
	}
	return int(n)
}

func (s *scan) time() time.Time {
	var t time.Time
	if err := t.UnmarshalText(s.raw()); err != nil {
		s.fail()
	}
	return t
}

func (s *scan) hash() domain.SecretHash {
	var h domain.SecretHash
	b := s.raw()
	if len(b) != 2*len(h) {
		s.fail()
		return h
	}
	if _, err := hex.Decode(h[:], b); err != nil {
		s.fail()
	}
	return h
}
