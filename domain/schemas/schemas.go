// Package schemas holds the JSON Schema (draft 2020-12) of each event type's
// JSON, as the ledger writes it to the stream: the contract for subscribers in
// any language, which can use the .json files in this folder as they are. Each
// schema's $id is "urn:tokenledger:schema:" and the event's CloudEvents type
// (eventstore.CloudEventType). Go code can read them from FS.
package schemas

import (
	"embed"

	"github.com/tokenledger/tokenledger/domain"
)

// FS holds the schema files, named as File names them.
//
//go:embed *.json
var FS embed.FS

// IDPrefix is what a schema's $id adds before the event's CloudEvents type.
const IDPrefix = "urn:tokenledger:schema:"

// files names each event type's current schema. A new version of an event's
// JSON gets a new file beside the old one, which stays for events already
// stored.
var files = map[domain.EventType]string{
	domain.TokenCreated:       "token-created.v1.json",
	domain.TokenUpdated:       "token-updated.v1.json",
	domain.TokenRotated:       "token-rotated.v1.json",
	domain.TokenAssigned:      "token-assigned.v1.json",
	domain.TokenUnassigned:    "token-unassigned.v1.json",
	domain.TokenDeleted:       "token-deleted.v1.json",
	domain.TokenReuseDetected: "token-reuse-detected.v1.json",
}

// File is the name in FS of the schema of events of type t; "" for a type
// the ledger does not know.
func File(t domain.EventType) string { return files[t] }
