package eventstore

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"time"

	"github.com/valyala/fastjson"

	"github.com/tokenledger/tokenledger/domain"
)

// eventDecoder turns stored JSON into events many times faster than
// encoding/json, which matters when a view is rebuilt from a million events.
// It tries three ways, each stricter than the next is general: the canonical
// scan (exactly what the ledger writes), then a fastjson parse accepting only
// known keys, each once, with the right types, then encoding/json. The first
// two only ever accept what encoding/json would read the same way, so the
// three never disagree about what a message says. Not safe for concurrent
// use: one per reading goroutine.
type eventDecoder struct {
	p fastjson.Parser
	// seen interns strings that repeat from event to event (organization,
	// actor, source address, user agent, workspace), so a replay does not
	// allocate them again each time. Bounded: it starts over when full.
	seen map[string]string
}

var errNotPlain = errors.New("not in the plain shape")

func (d *eventDecoder) decode(data []byte) (domain.Event, error) {
	if d.seen == nil || len(d.seen) > 4096 {
		d.seen = make(map[string]string, 256)
	}
	if e, ok := canonical(data, d.seen); ok {
		return e, nil
	}
	if e, err := d.fast(data); err == nil {
		return e, nil
	}
	var e domain.Event
	err := json.Unmarshal(data, &e)
	return e, err
}

func (d *eventDecoder) fast(data []byte) (domain.Event, error) {
	// fastjson forgives some invalid JSON (unknown escapes) that encoding/json
	// refuses; check validity the strict way first. Events the ledger wrote take
	// the canonical path and never come here.
	// Escapes are left to encoding/json too: the two unescape some
	// sequences differently (a lone surrogate, say).
	if !json.Valid(data) || bytes.IndexByte(data, '\\') >= 0 {
		return domain.Event{}, errNotPlain
	}
	v, err := d.p.ParseBytes(data)
	if err != nil {
		return domain.Event{}, err
	}
	var e domain.Event
	r := fields{seen: d.seen}
	var data_ *fastjson.Value
	r.visit(v, func(key []byte, v *fastjson.Value) {
		switch string(key) {
		case "event_id":
			e.ID = r.str(v)
		case "event_type":
			e.Type = domain.EventType(r.known(v))
		case "token_id":
			e.TokenID = r.str(v)
		case "organization_id":
			e.OrganizationID = r.interned(v)
		case "version":
			e.Version = r.uint(v)
		case "occurred_at":
			e.OccurredAt = r.time(v)
		case "idempotency_key":
			e.IdempotencyKey = r.str(v)
		case "request_hash":
			e.RequestHash = r.str(v)
		case "actor":
			r.visit(v, func(key []byte, v *fastjson.Value) {
				switch string(key) {
				case "actor_token_id":
					e.Actor.TokenID = r.interned(v)
				case "request_id":
					e.Actor.RequestID = r.str(v)
				case "source_ip":
					e.Actor.SourceIP = r.interned(v)
				case "user_agent":
					e.Actor.UserAgent = r.interned(v)
				default:
					r.err = errNotPlain
				}
			})
		case "data":
			data_ = v
		default:
			r.err = errNotPlain
		}
	})
	if r.err != nil || data_ == nil {
		return domain.Event{}, errNotPlain
	}
	switch e.Type {
	case domain.TokenCreated:
		var c domain.CreatedData
		r.visit(data_, func(key []byte, v *fastjson.Value) {
			switch string(key) {
			case "scope":
				c.Scope = domain.Scope(r.known(v))
			case "workspace_id":
				c.WorkspaceID = r.interned(v)
			case "deployment_id":
				c.DeploymentID = r.str(v)
			case "name":
				c.Name = r.str(v)
			case "description":
				c.Description = r.str(v)
			case "role":
				c.Role = domain.Role(r.known(v))
			case "expiration_days":
				if n := r.uint(v); n <= math.MaxInt {
					c.ExpirationDays = int(n)
				} else {
					r.err = errNotPlain // encoding/json refuses it; never wrap
				}
			case "expires_at":
				c.ExpiresAt = r.timePtr(v)
			case "secret_hash":
				c.SecretHash = r.hash(v)
			case "fingerprint":
				c.Fingerprint = r.str(v)
			default:
				r.err = errNotPlain
			}
		})
		e.Data = c
	case domain.TokenUpdated:
		var u domain.UpdatedData
		r.visit(data_, func(key []byte, v *fastjson.Value) {
			switch string(key) {
			case "name":
				u.Name = r.strPtr(v)
			case "previous_name":
				u.PreviousName = r.strPtr(v)
			case "description":
				u.Description = r.strPtr(v)
			case "previous_description":
				u.PreviousDescription = r.strPtr(v)
			case "role":
				u.Role = domain.Role(r.known(v))
			case "previous_role":
				u.PreviousRole = domain.Role(r.known(v))
			default:
				r.err = errNotPlain
			}
		})
		e.Data = u
	case domain.TokenRotated:
		var rd domain.RotatedData
		r.visit(data_, func(key []byte, v *fastjson.Value) {
			switch string(key) {
			case "secret_hash":
				rd.SecretHash = r.hash(v)
			case "fingerprint":
				rd.Fingerprint = r.str(v)
			case "previous_secret_hash":
				rd.PreviousSecretHash = r.hash(v)
			case "previous_fingerprint":
				rd.PreviousFingerprint = r.str(v)
			case "expires_at":
				rd.ExpiresAt = r.timePtr(v)
			default:
				r.err = errNotPlain
			}
		})
		e.Data = rd
	case domain.TokenAssigned:
		var a domain.AssignedData
		r.visit(data_, func(key []byte, v *fastjson.Value) {
			switch string(key) {
			case "workspace_id":
				a.WorkspaceID = r.interned(v)
			case "role":
				a.Role = domain.Role(r.known(v))
			case "previous_role":
				a.PreviousRole = domain.Role(r.known(v))
			default:
				r.err = errNotPlain
			}
		})
		e.Data = a
	case domain.TokenUnassigned:
		var u domain.UnassignedData
		r.visit(data_, func(key []byte, v *fastjson.Value) {
			switch string(key) {
			case "workspace_id":
				u.WorkspaceID = r.interned(v)
			case "previous_role":
				u.PreviousRole = domain.Role(r.known(v))
			default:
				r.err = errNotPlain
			}
		})
		e.Data = u
	case domain.TokenDeleted:
		r.visit(data_, func([]byte, *fastjson.Value) { r.err = errNotPlain })
		e.Data = domain.DeletedData{}
	default:
		return domain.Event{}, errNotPlain
	}
	if r.err != nil {
		return domain.Event{}, r.err
	}
	return e, nil
}

// fields reads values of the plain shape, remembering the first misfit.
type fields struct {
	err  error
	seen map[string]string
}

func (r *fields) interned(v *fastjson.Value) string {
	b, err := v.StringBytes()
	if err != nil || !plainString(b) {
		r.err = errNotPlain
		return ""
	}
	if s, ok := r.seen[string(b)]; ok {
		return s
	}
	s := string(b)
	r.seen[s] = s
	return s
}

// visit calls f for each key of object v; a non-object, or a key twice,
// is a misfit. Keys are compared as bytes: no allocation per key.
func (r *fields) visit(v *fastjson.Value, f func(key []byte, v *fastjson.Value)) {
	o, err := v.Object()
	if err != nil || o.Len() > 16 {
		r.err = errNotPlain
		return
	}
	var seen [16][]byte
	n := 0
	o.Visit(func(k []byte, v *fastjson.Value) {
		for _, s := range seen[:n] {
			if string(s) == string(k) {
				r.err = errNotPlain
			}
		}
		seen[n] = k
		n++
		f(k, v)
	})
}

func (r *fields) str(v *fastjson.Value) string {
	b, err := v.StringBytes()
	if err != nil || !plainString(b) { // bad UTF-8, control bytes: encoding/json decides
		r.err = errNotPlain
		return ""
	}
	return string(b)
}

// known returns the constant for a well-known value (event type, role,
// scope) without allocating, and any other string as str does.
func (r *fields) known(v *fastjson.Value) string {
	b, err := v.StringBytes()
	if err != nil || !plainString(b) {
		r.err = errNotPlain
		return ""
	}
	if s, ok := knownValues[string(b)]; ok {
		return s
	}
	return string(b)
}

var knownValues = func() map[string]string {
	m := map[string]string{}
	for _, t := range domain.EventTypes {
		m[string(t)] = string(t)
	}
	for _, s := range []domain.Scope{domain.ScopeOrganization, domain.ScopeWorkspace, domain.ScopeDeployment} {
		m[string(s)] = string(s)
		for _, r := range domain.RolesOf(s) {
			m[string(r)] = string(r)
		}
	}
	return m
}()

func (r *fields) strPtr(v *fastjson.Value) *string {
	if v.Type() == fastjson.TypeNull {
		return nil
	}
	s := r.str(v)
	return &s
}

func (r *fields) uint(v *fastjson.Value) uint64 {
	n, err := v.Uint64()
	if err != nil || v.Type() != fastjson.TypeNumber {
		r.err = errNotPlain
	}
	return n
}

func (r *fields) time(v *fastjson.Value) time.Time {
	b, err := v.StringBytes()
	if err != nil {
		r.err = errNotPlain
		return time.Time{}
	}
	var t time.Time
	if err := t.UnmarshalText(b); err != nil {
		r.err = errNotPlain
	}
	return t
}

func (r *fields) timePtr(v *fastjson.Value) *time.Time {
	if v.Type() == fastjson.TypeNull {
		return nil
	}
	t := r.time(v)
	return &t
}

func (r *fields) hash(v *fastjson.Value) domain.SecretHash {
	var h domain.SecretHash
	b, err := v.StringBytes()
	if err != nil || len(b) != 2*len(h) {
		r.err = errNotPlain
		return h
	}
	if _, err := hex.Decode(h[:], b); err != nil {
		r.err = errNotPlain
	}
	return h
}
