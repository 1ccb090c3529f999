package exporters

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// ReadRows calls fn for each row of an export file of format f, in file
// order, and stops at fn's first error, which it returns as is. A file that
// is not a well-formed export of that format gives an error saying where it
// went wrong; rows before that point have already been passed to fn.
func ReadRows(f Format, r io.ReaderAt, size int64, fn func(Row) error) error {
	switch f {
	case FormatParquet:
		return readParquet(r, size, fn)
	case FormatJSONL:
		return readJSONL(io.NewSectionReader(r, 0, size), fn)
	case FormatJSON:
		return readJSONArray(io.NewSectionReader(r, 0, size), fn)
	}
	_, err := ParseFormat(string(f))
	return err
}

// jsonRow is a row as JSON holds it: pointers tell a missing or null key
// from an empty string.
type jsonRow struct {
	Sequence       *int64  `json:"sequence"`
	EventID        *string `json:"event_id"`
	EventType      *string `json:"event_type"`
	OccurredAt     *string `json:"occurred_at"`
	OrganizationID *string `json:"organization_id"`
	WorkspaceID    *string `json:"workspace_id"`
	DeploymentID   *string `json:"deployment_id"`
	TokenID        *string `json:"token_id"`
	TokenName      *string `json:"token_name"`
	Scope          *string `json:"scope"`
	Role           *string `json:"role"`
	PreviousRole   *string `json:"previous_role"`
	ActorTokenID   *string `json:"actor_token_id"`
	SourceIP       *string `json:"source_ip"`
	UserAgent      *string `json:"user_agent"`
	RequestID      *string `json:"request_id"`
	Fingerprint    *string `json:"fingerprint"`
	PrevHash       *string `json:"prev_hash"`
	Hash           *string `json:"hash"`
	Details        *string `json:"details"`
}

// row checks the required keys and converts; the error names every missing
// key at once.
func (j *jsonRow) row() (Row, error) {
	var missing []string
	req := func(name string, p *string) string {
		if p == nil {
			missing = append(missing, name)
			return ""
		}
		return *p
	}
	opt := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	var r Row
	if j.Sequence == nil {
		missing = append(missing, "sequence")
	} else {
		r.Sequence = *j.Sequence
	}
	r.EventID = req("event_id", j.EventID)
	r.EventType = domain.EventType(req("event_type", j.EventType))
	at := req("occurred_at", j.OccurredAt)
	r.OrganizationID = req("organization_id", j.OrganizationID)
	r.WorkspaceID = opt(j.WorkspaceID)
	r.DeploymentID = opt(j.DeploymentID)
	r.TokenID = req("token_id", j.TokenID)
	r.TokenName = req("token_name", j.TokenName)
	r.Scope = domain.Scope(req("scope", j.Scope))
	r.Role = domain.Role(opt(j.Role))
	r.PreviousRole = domain.Role(opt(j.PreviousRole))
	r.ActorTokenID = req("actor_token_id", j.ActorTokenID)
	r.SourceIP = opt(j.SourceIP)
	r.UserAgent = opt(j.UserAgent)
	r.RequestID = opt(j.RequestID)
	r.Fingerprint = opt(j.Fingerprint)
	r.PrevHash = opt(j.PrevHash)
	r.Hash = req("hash", j.Hash)
	r.Details = req("details", j.Details)
	if len(missing) > 0 {
		return Row{}, fmt.Errorf("missing or null: %s", strings.Join(missing, ", "))
	}
	t, err := time.Parse(domain.AuditTimeLayout, at)
	if err != nil {
		return Row{}, fmt.Errorf("occurred_at %q is not a time in the layout %s", at, domain.AuditTimeLayout)
	}
	r.OccurredAt = t.UTC()
	return r, nil
}

// maxLine bounds a JSONL line. A row is a few kilobytes at most (details
// holds two descriptions of at most 1000 characters); a longer line is not a
// row, and reading it whole could exhaust memory.
const maxLine = 1 << 20

// readJSONL reads one JSON object per line. Every line, the last included,
// ends with a newline: a missing one means a cut-off file.
func readJSONL(in io.Reader, fn func(Row) error) error {
	br := bufio.NewReaderSize(in, 64<<10)
	var long []byte
	for line := 1; ; line++ {
		b, err := br.ReadSlice('\n')
		for errors.Is(err, bufio.ErrBufferFull) {
			if len(long)+len(b) > maxLine {
				return fmt.Errorf("read jsonl export: line %d is longer than %d bytes: not an export row", line, maxLine)
			}
			long = append(long, b...)
			b, err = br.ReadSlice('\n')
		}
		if long != nil {
			b, long = append(long, b...), nil
		}
		if errors.Is(err, io.EOF) {
			if len(b) > 0 {
				return fmt.Errorf("read jsonl export: line %d does not end with a newline: the file is cut off", line)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("read jsonl export: line %d: %w", line, err)
		}
		r, err := decodeRow(b)
		if err != nil {
			return fmt.Errorf("read jsonl export: line %d: %w", line, err)
		}
		if err := fn(r); err != nil {
			return err
		}
	}
}

func decodeRow(b []byte) (Row, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var j jsonRow
	if err := dec.Decode(&j); err != nil {
		return Row{}, fmt.Errorf("not a row object: %w", err)
	}
	if dec.More() {
		return Row{}, errors.New("more than one JSON value on the line")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Row{}, errors.New("more than one JSON value on the line")
	}
	return j.row()
}

// readJSONArray reads one JSON array of row objects, streaming: the array is
// never held whole.
func readJSONArray(in io.Reader, fn func(Row) error) error {
	dec := json.NewDecoder(bufio.NewReaderSize(in, 64<<10))
	dec.DisallowUnknownFields()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return fmt.Errorf("read json export: the file does not start with a JSON array")
	}
	n := 0
	for dec.More() {
		n++
		var j jsonRow
		if err := dec.Decode(&j); err != nil {
			return fmt.Errorf("read json export: row %d: %w", n, err)
		}
		r, err := j.row()
		if err != nil {
			return fmt.Errorf("read json export: row %d: %w", n, err)
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim(']') {
		return fmt.Errorf("read json export: after row %d: the array is not closed: the file is cut off or damaged", n)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("read json export: data after the array's end")
	}
	return nil
}
