package exporters

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// Writer writes the rows of one export file, in the order given. Close
// finishes the file (the Parquet footer, the JSON array's "]") but does not
// close the underlying io.Writer. After an error every later call returns it:
// a file that failed half-way must not be finished as if it were whole.
type Writer interface {
	Write(Row) error
	Close() error
}

// NewWriter starts an export file of format f on w.
func NewWriter(f Format, w io.Writer) (Writer, error) {
	switch f {
	case FormatParquet:
		return newParquetWriter(w), nil
	case FormatJSONL:
		return &jsonWriter{out: w}, nil
	case FormatJSON:
		return &jsonWriter{out: w, array: true}, nil
	}
	_, err := ParseFormat(string(f))
	return nil, err
}

var (
	_ Writer = (*jsonWriter)(nil)
	_ Writer = (*parquetWriter)(nil)
	_ Writer = (*Export)(nil)
)

var errClosed = errors.New("export writer is closed")

// jsonFlushSize is how much encoded text a JSON writer gathers before it
// writes: large enough that the io.Writer sees few calls, small enough to
// never matter for memory.
const jsonFlushSize = 64 << 10

// jsonWriter writes JSON Lines, or with array set one JSON array whose
// elements are the same objects, one per line. Rows are appended by hand
// rather than through encoding/json: reflection per row would make it the
// slowest part of an export.
type jsonWriter struct {
	out    io.Writer
	array  bool
	buf    []byte
	rows   int64
	err    error
	closed bool
}

func (w *jsonWriter) Write(r Row) error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errClosed
	}
	if w.array {
		if w.rows == 0 {
			w.buf = append(w.buf, "[\n"...)
		} else {
			w.buf = append(w.buf, ",\n"...)
		}
	}
	w.buf = appendRowJSON(w.buf, r)
	if !w.array {
		w.buf = append(w.buf, '\n')
	}
	w.rows++
	if len(w.buf) >= jsonFlushSize {
		return w.flush()
	}
	return nil
}

func (w *jsonWriter) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errClosed
	}
	w.closed = true
	if w.array {
		if w.rows == 0 {
			w.buf = append(w.buf, '[')
		} else {
			w.buf = append(w.buf, '\n')
		}
		w.buf = append(w.buf, "]\n"...)
	}
	return w.flush()
}

func (w *jsonWriter) flush() error {
	if _, err := w.out.Write(w.buf); err != nil {
		w.err = fmt.Errorf("write %s export: %w", w.format(), err)
		return w.err
	}
	w.buf = w.buf[:0]
	return nil
}

func (w *jsonWriter) format() Format {
	if w.array {
		return FormatJSON
	}
	return FormatJSONL
}

// appendRowJSON appends r as one JSON object, keys in column order, empty
// optional columns as null, occurred_at in domain.AuditTimeLayout.
func appendRowJSON(b []byte, r Row) []byte {
	b = append(b, `{"sequence":`...)
	b = strconv.AppendInt(b, r.Sequence, 10)
	b = appendField(b, `,"event_id":`, r.EventID, false)
	b = appendField(b, `,"event_type":`, string(r.EventType), false)
	b = append(b, `,"occurred_at":"`...)
	b = appendTime(b, r.OccurredAt)
	b = append(b, '"')
	b = appendField(b, `,"organization_id":`, r.OrganizationID, false)
	b = appendField(b, `,"workspace_id":`, r.WorkspaceID, true)
	b = appendField(b, `,"deployment_id":`, r.DeploymentID, true)
	b = appendField(b, `,"token_id":`, r.TokenID, false)
	b = appendField(b, `,"token_name":`, r.TokenName, false)
	b = appendField(b, `,"scope":`, string(r.Scope), false)
	b = appendField(b, `,"role":`, string(r.Role), true)
	b = appendField(b, `,"previous_role":`, string(r.PreviousRole), true)
	b = appendField(b, `,"actor_token_id":`, r.ActorTokenID, false)
	b = appendField(b, `,"source_ip":`, r.SourceIP, true)
	b = appendField(b, `,"user_agent":`, r.UserAgent, true)
	b = appendField(b, `,"request_id":`, r.RequestID, true)
	b = appendField(b, `,"fingerprint":`, r.Fingerprint, true)
	b = appendField(b, `,"prev_hash":`, r.PrevHash, true)
	b = appendField(b, `,"hash":`, r.Hash, false)
	b = appendField(b, `,"details":`, r.Details, false)
	return append(b, '}')
}

func appendField(b []byte, key, v string, optional bool) []byte {
	b = append(b, key...)
	if optional && v == "" {
		return append(b, "null"...)
	}
	return domain.AppendJSONString(b, v, false)
}

// appendTime appends t in domain.AuditTimeLayout ("2006-01-02T15:04:05.000000Z"
// for UTC), without time.Format's layout parsing for each row.
func appendTime(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(b, domain.AuditTimeLayout)
	}
	hour, min, sec := t.Clock()
	b = appendDigits(b, year, 4)
	b = append(b, '-')
	b = appendDigits(b, int(month), 2)
	b = append(b, '-')
	b = appendDigits(b, day, 2)
	b = append(b, 'T')
	b = appendDigits(b, hour, 2)
	b = append(b, ':')
	b = appendDigits(b, min, 2)
	b = append(b, ':')
	b = appendDigits(b, sec, 2)
	b = append(b, '.')
	b = appendDigits(b, t.Nanosecond()/1000, 6)
	return append(b, 'Z')
}

// appendDigits appends v, 0 <= v < 10^width, as exactly width digits.
func appendDigits(b []byte, v, width int) []byte {
	b = append(b, "000000"[:width]...)
	for i := len(b) - 1; v > 0; i-- {
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return b
}
