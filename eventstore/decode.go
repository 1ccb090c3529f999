package eventstore

import (
	"encoding/json"

	"github.com/tokenledger/tokenledger/domain"
)

// eventDecoder turns stored JSON into events many times faster than
// encoding/json, which matters when a view is rebuilt from a million events:
// the canonical scan reads exactly what the ledger writes, and anything else
// (a name with an escaped character, a message some other writer stored) goes
// to encoding/json. The scan only ever accepts what encoding/json would read
// the same way (FuzzDecoder), so the two never disagree about a message. Not
// safe for concurrent use: one per reading goroutine.
type eventDecoder struct {
	// seen interns strings that repeat from event to event (organization,
	// actor, source address, user agent, workspace), so a replay does not
	// allocate them again each time. Bounded: it starts over when full.
	seen map[string]string
}

func (d *eventDecoder) decode(data []byte) (domain.Event, error) {
	if d.seen == nil || len(d.seen) > 4096 {
		d.seen = make(map[string]string, 256)
	}
	if e, ok := canonical(data, d.seen); ok {
		return e, nil
	}
	var e domain.Event
	err := json.Unmarshal(data, &e)
	return e, err
}

// knownValues maps each event type, scope and role to its constant, so the
// scan hands those out without allocating.
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
