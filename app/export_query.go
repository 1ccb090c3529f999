package app

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/exporters"
)

// ExportQuery is what an audit export selects. The zero value is every event
// of the caller's organization, as Parquet.
type ExportQuery struct {
	Format exporters.Format
	// Since and Until bound occurred_at: Since <= occurred_at < Until; zero:
	// unbounded.
	Since, Until time.Time
	Types        []domain.EventType // none: every type
	TokenID      string
	WorkspaceID  string // rows whose workspace_id is this
	DeploymentID string
	ActorTokenID string
	// AfterSequence continues an earlier export: rows after this stream
	// sequence only (the earlier manifest's stream_sequence).
	AfterSequence uint64
}

// ParseExportQuery reads an export query from named values (a URL query):
// format, since, until, type (repeated), token, workspace, deployment,
// actor, after_sequence. since and until are RFC 3339 times or a duration
// back from now ("90m", "24h", "30d"). Every problem is reported at once,
// each naming its field.
func ParseExportQuery(get func(name string) []string, now time.Time) (ExportQuery, error) {
	var q ExportQuery
	var problems []domain.FieldError
	bad := func(field, rule string) { problems = append(problems, domain.FieldError{Field: field, Rule: rule}) }
	one := func(name string) string {
		v := get(name)
		if len(v) > 1 {
			bad(name, "give it at most once")
		}
		if len(v) == 0 {
			return ""
		}
		return v[0]
	}

	q.Format = exporters.FormatParquet
	if f := one("format"); f != "" {
		var err error
		if q.Format, err = exporters.ParseFormat(f); err != nil {
			bad("format", "must be one of parquet, jsonl, json")
		}
	}
	for _, field := range []struct {
		name string
		to   *time.Time
	}{{"since", &q.Since}, {"until", &q.Until}} {
		if v := one(field.name); v != "" {
			t, err := parseMoment(v, now)
			if err != nil {
				bad(field.name, err.Error())
			}
			*field.to = t
		}
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && !q.Since.Before(q.Until) {
		bad("until", "must be later than since")
	}
	for _, t := range get("type") {
		typ := domain.EventType(t)
		if !slices.Contains(domain.EventTypes, typ) {
			bad("type", fmt.Sprintf("must be an event type (%s), got %q", eventTypeNames(), t))
			continue
		}
		if !slices.Contains(q.Types, typ) {
			q.Types = append(q.Types, typ)
		}
	}
	if q.TokenID = one("token"); q.TokenID != "" && !domain.ValidTokenID(q.TokenID) {
		bad("token", "must be a token id (tok_ and 26 characters a-z, 2-7)")
	}
	if q.ActorTokenID = one("actor"); q.ActorTokenID != "" && !domain.ValidTokenID(q.ActorTokenID) && q.ActorTokenID != domain.SystemActor {
		bad("actor", "must be a token id (tok_ and 26 characters a-z, 2-7) or "+domain.SystemActor)
	}
	for _, field := range []struct {
		name string
		to   *string
	}{{"workspace", &q.WorkspaceID}, {"deployment", &q.DeploymentID}} {
		if *field.to = one(field.name); *field.to != "" && !domain.ValidID(*field.to) {
			bad(field.name, "must be 1-64 characters of letters, digits, '-' or '_', starting with a letter or digit")
		}
	}
	if v := one("after_sequence"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			bad("after_sequence", "must be a stream sequence: a whole number from 0")
		}
		q.AfterSequence = n
	}
	if len(problems) > 0 {
		return ExportQuery{}, &domain.ValidationError{Problems: problems}
	}
	return q, nil
}

// parseMoment reads an RFC 3339 time, or a duration back from now: Go's
// units (90m, 24h) and d for days (30d).
func parseMoment(v string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		// The zero time means "unbounded" in an ExportQuery: taken as
		// given, until=0001-01-01T00:00:00Z would export everything.
		if t.IsZero() {
			return time.Time{}, fmt.Errorf("must be later than 0001-01-01T00:00:00Z, got %q", v)
		}
		return t.UTC(), nil
	}
	var d time.Duration
	var err error
	if days, ok := strings.CutSuffix(v, "d"); ok {
		var n int
		n, err = strconv.Atoi(days)
		if err == nil && (n < 0 || n > 100*366) {
			err = fmt.Errorf("out of range")
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		d, err = time.ParseDuration(v)
	}
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("must be an RFC 3339 time (2026-01-02T15:04:05Z) or a duration back from now (90m, 24h, 30d), got %q", v)
	}
	return now.Add(-d).UTC(), nil
}

func eventTypeNames() string {
	names := make([]string, len(domain.EventTypes))
	for i, t := range domain.EventTypes {
		names[i] = string(t)
	}
	return strings.Join(names, ", ")
}

// keeps reports whether an event in the scanned range belongs to the export:
// the filters the stream's subjects cannot apply.
func (q ExportQuery) keeps(r exporters.Row) bool {
	switch {
	case !q.Since.IsZero() && r.OccurredAt.Before(q.Since),
		!q.Until.IsZero() && !r.OccurredAt.Before(q.Until),
		q.WorkspaceID != "" && r.WorkspaceID != q.WorkspaceID,
		q.DeploymentID != "" && r.DeploymentID != q.DeploymentID,
		q.ActorTokenID != "" && r.ActorTokenID != q.ActorTokenID:
		return false
	}
	return true
}
