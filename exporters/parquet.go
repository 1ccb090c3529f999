package exporters

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/zstd"

	"github.com/tokenledger/tokenledger/domain"
)

// RowGroupRows bounds a Parquet row group. The writer holds one row group in
// memory and writes it out when it is full, so an export's memory stays the
// same however many rows it has; 16384 rows are a few megabytes, and still
// large enough for readers to scan fast.
const RowGroupRows = 16384

// parquetBatch is how many rows the writer hands to parquet-go at once: one
// call per row would spend more time on bookkeeping than on the rows.
const parquetBatch = 256

// parquetPageSize is the in-memory size at which a column's page is written.
const parquetPageSize = 1 << 20

// noStatistics are the columns written without min/max statistics.
var noStatistics = []string{"event_id", "token_name", "user_agent", "request_id", "fingerprint", "prev_hash", "hash", "details"}

// parquetRow is Row as the writer hands it to parquet-go: the same columns,
// with the optional ones as pointers, nil for null. Row's empty strings would
// be nulls too, but parquet-go takes two faster, riskier paths for them: its
// batched null bitmap for value-type optional fields (v0.32.0 marks some
// nulls as present empty strings: column_buffer_write.go compares the rest of
// a bitmap word with (1<<y)-1 where it means all ones), and a zero-value rule
// its releases have flipped back and forth. A nil pointer is null in every
// version. TestParquetNulls guards this.
type parquetRow struct {
	Sequence       int64            `parquet:"sequence"`
	EventID        string           `parquet:"event_id"`
	EventType      domain.EventType `parquet:"event_type,dict"`
	OccurredAt     time.Time        `parquet:"occurred_at,timestamp(microsecond:utc)"`
	OrganizationID string           `parquet:"organization_id,dict"`
	WorkspaceID    *string          `parquet:"workspace_id,optional,dict"`
	DeploymentID   *string          `parquet:"deployment_id,optional,dict"`
	TokenID        string           `parquet:"token_id"`
	TokenName      string           `parquet:"token_name"`
	Scope          domain.Scope     `parquet:"scope,dict"`
	Role           *domain.Role     `parquet:"role,optional,dict"`
	PreviousRole   *domain.Role     `parquet:"previous_role,optional,dict"`
	ActorTokenID   string           `parquet:"actor_token_id,dict"`
	SourceIP       *string          `parquet:"source_ip,optional,dict"`
	UserAgent      *string          `parquet:"user_agent,optional,dict"`
	RequestID      *string          `parquet:"request_id,optional"`
	Fingerprint    *string          `parquet:"fingerprint,optional"`
	PrevHash       *string          `parquet:"prev_hash,optional"`
	Hash           string           `parquet:"hash"`
	Details        string           `parquet:"details"`
}

// set fills p from r, pointing into r: r must outlive the write.
func (p *parquetRow) set(r *Row) {
	*p = parquetRow{
		Sequence: r.Sequence, EventID: r.EventID, EventType: r.EventType, OccurredAt: r.OccurredAt,
		OrganizationID: r.OrganizationID, WorkspaceID: ptr(&r.WorkspaceID), DeploymentID: ptr(&r.DeploymentID),
		TokenID: r.TokenID, TokenName: r.TokenName, Scope: r.Scope, Role: ptr(&r.Role), PreviousRole: ptr(&r.PreviousRole),
		ActorTokenID: r.ActorTokenID, SourceIP: ptr(&r.SourceIP), UserAgent: ptr(&r.UserAgent), RequestID: ptr(&r.RequestID),
		Fingerprint: ptr(&r.Fingerprint), PrevHash: ptr(&r.PrevHash), Hash: r.Hash, Details: r.Details,
	}
}

// ptr is nil for an empty string: the export's null.
func ptr[S ~string](s *S) *S {
	if *s == "" {
		return nil
	}
	return s
}

// rowSchema is the Parquet schema of an export. Reading decodes into Row,
// whose tags give the same schema (a test checks they agree).
var rowSchema = parquet.SchemaOf(parquetRow{})

// parquetWriter writes Row values as a Parquet file: zstd on every column, and
// the encodings and types set by parquetRow's tags.
type parquetWriter struct {
	w      *parquet.GenericWriter[parquetRow]
	batch  []Row
	out    []parquetRow
	err    error
	closed bool
}

func newParquetWriter(out io.Writer, extra ...parquet.WriterOption) *parquetWriter {
	opts := append([]parquet.WriterOption{rowSchema,
		parquet.MaxRowsPerRowGroup(RowGroupRows),
		// The fastest zstd level: an export is written while the client
		// waits, and the better levels gain little on this data.
		parquet.Compression(&zstd.Codec{Level: zstd.SpeedFastest, Concurrency: 1}), // one encoder: its window is most of the writer's memory
		parquet.CreatedBy("tokenledger", "audit-export-v1", ""),
		// Pages of up to 1 MiB before encoding: fewer, larger pages write
		// faster (each page is compressed and gets statistics on its own),
		// and a row group is still read in a few pages.
		parquet.PageBufferSize(parquetPageSize),
	}, extra...)
	// Min/max statistics serve readers that skip pages and row groups by a
	// filter; on ids, hashes and free text nobody filters by range, and
	// computing them is a tenth of the write time.
	for _, col := range noStatistics {
		opts = append(opts, parquet.SkipPageBounds(col), parquet.SkipPageStatistics(col))
	}
	return &parquetWriter{
		w:     parquet.NewGenericWriter[parquetRow](out, opts...),
		batch: make([]Row, 0, parquetBatch),
		out:   make([]parquetRow, parquetBatch),
	}
}

func (p *parquetWriter) Write(r Row) error {
	if p.err != nil {
		return p.err
	}
	if p.closed {
		return errClosed
	}
	p.batch = append(p.batch, r)
	if len(p.batch) == cap(p.batch) {
		return p.flush()
	}
	return nil
}

func (p *parquetWriter) flush() error {
	if len(p.batch) == 0 {
		return nil
	}
	for i := range p.batch {
		p.out[i].set(&p.batch[i])
	}
	if _, err := p.w.Write(p.out[:len(p.batch)]); err != nil {
		p.err = fmt.Errorf("write parquet export: %w", err)
		return p.err
	}
	// Drop the strings so the buffers hold no old rows alive.
	clear(p.batch)
	clear(p.out)
	p.batch = p.batch[:0]
	return nil
}

func (p *parquetWriter) Close() error {
	if p.err != nil {
		return p.err
	}
	if p.closed {
		return errClosed
	}
	p.closed = true
	if err := p.flush(); err != nil {
		return err
	}
	if err := p.w.Close(); err != nil {
		p.err = fmt.Errorf("finish parquet export: %w", err)
		return p.err
	}
	return nil
}

// readParquet calls fn for each row of a Parquet export, in file order.
// parquet-go panics on some malformed input rather than returning an error;
// a damaged file is exactly what a verifier meets, so a panic is turned into
// an error here.
func readParquet(r io.ReaderAt, size int64, fn func(Row) error) (err error) {
	var inFn bool
	defer func() {
		if v := recover(); v != nil {
			if inFn { // not parquet-go's doing: let it through
				panic(v)
			}
			err = fmt.Errorf("read parquet export: malformed file (%v)", v)
		}
	}()
	if err := checkParquetFooter(r, size); err != nil {
		return fmt.Errorf("read parquet export: %w", err)
	}
	f, err := parquet.OpenFile(r, size, parquet.SkipBloomFilters(true), parquet.SkipPageIndex(true))
	if err != nil {
		return fmt.Errorf("read parquet export: %w", err)
	}
	if err := checkSchema(f.Schema()); err != nil {
		return fmt.Errorf("read parquet export: %w", err)
	}
	if err := checkParquetPages(f, r, size); err != nil {
		return fmt.Errorf("read parquet export: damaged file: %w", err)
	}
	buf := make([]Row, parquetBatch)
	var n int64
	for g, rg := range f.RowGroups() {
		rows := parquet.NewGenericRowGroupReader[Row](rg)
		for {
			k, rerr := rows.Read(buf)
			for i := range buf[:k] {
				n++
				inFn = true
				if err := fn(buf[i]); err != nil {
					return err
				}
				inFn = false
			}
			if errors.Is(rerr, io.EOF) {
				break
			}
			if rerr != nil {
				_ = rows.Close()
				return fmt.Errorf("read parquet export: row group %d, after row %d: %w", g+1, n, rerr)
			}
		}
		if err := rows.Close(); err != nil {
			return fmt.Errorf("read parquet export: row group %d: %w", g+1, err)
		}
	}
	if n != f.NumRows() {
		return fmt.Errorf("read parquet export: the footer counts %d rows, the row groups hold %d", f.NumRows(), n)
	}
	return nil
}

// checkSchema refuses a Parquet file that is not an audit export, rather than
// letting parquet-go fill missing columns with empty values.
func checkSchema(s *parquet.Schema) error {
	if parquet.EqualNodes(s, rowSchema) {
		return nil
	}
	var got []string
	for _, f := range s.Fields() {
		got = append(got, f.Name()+" "+nodeType(f))
	}
	var want []string
	for _, f := range rowSchema.Fields() {
		want = append(want, f.Name()+" "+nodeType(f))
	}
	return fmt.Errorf("not an audit export: its columns are (%s), an audit export's are (%s)",
		strings.Join(got, ", "), strings.Join(want, ", "))
}

func nodeType(n parquet.Node) string {
	t := n.Type().String()
	if n.Optional() {
		t += " optional"
	}
	return t
}
