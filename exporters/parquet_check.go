package exporters

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/encoding/thrift"
	"github.com/parquet-go/parquet-go/format"
)

// maxPageSize bounds a page's sizes: the writer's pages are a few hundred
// kilobytes, and a damaged size field must not make the reader allocate
// gigabytes.
const maxPageSize = 64 << 20

// checkParquetPages walks every page of every column chunk and checks what
// parquet-go's row reader trusts without checking: that each chunk lies
// inside the file, that page headers decode and agree with the chunk and the
// row group (value, row and null counts, level lengths, sizes), and that
// every page carries a CRC-32 that matches its bytes.
//
// It exists because parquet-go decodes pages with unsafe code: a damaged
// header can make it print warnings and then read outside its buffers, a
// crash no recover can catch. A verifier meets damaged files by design, so
// the rows are read only from a file whose pages have passed this check.
// The CRC makes the page bytes trustworthy; the counts make the headers
// agree with them. (Our writer always writes CRCs; a file without them is
// not one of our exports.)
func checkParquetPages(f *parquet.File, r io.ReaderAt, size int64) error {
	md := f.Metadata()
	leaves := rowSchema.Columns()
	var total int64
	for g, rg := range md.RowGroups {
		if rg.NumRows < 0 || rg.NumRows > size {
			return fmt.Errorf("row group %d: impossible row count %d", g+1, rg.NumRows)
		}
		total += rg.NumRows
		if len(rg.Columns) != len(leaves) {
			return fmt.Errorf("row group %d has %d columns, want %d", g+1, len(rg.Columns), len(leaves))
		}
		for c := range rg.Columns {
			field := rowSchema.Fields()[c]
			cm := &rg.Columns[c].MetaData
			if len(cm.PathInSchema) != 1 || cm.PathInSchema[0] != field.Name() || cm.Type != format.Type(field.Type().Kind()) {
				return fmt.Errorf("row group %d, column %d: the chunk's column %v (%v) is not %s", g+1, c+1, cm.PathInSchema, cm.Type, field.Name())
			}
			if err := checkChunk(cm, rg.NumRows, field.Optional(), r, size); err != nil {
				return fmt.Errorf("row group %d, column %s: %w", g+1, leaves[c][0], err)
			}
		}
	}
	if total != md.NumRows {
		return fmt.Errorf("the footer counts %d rows, its row groups %d", md.NumRows, total)
	}
	return nil
}

// checkParquetFooter checks the file's frame (magic bytes, footer length)
// and walks the footer's Thrift struct, before parquet-go reads it: parquet-go
// allocates the footer length it reads (up to 4 GB) and every list length in
// the footer without checking them against the file.
func checkParquetFooter(r io.ReaderAt, size int64) error {
	if size < 12 {
		return fmt.Errorf("%d bytes is too short for a Parquet file", size)
	}
	var head, tail [8]byte
	if _, err := r.ReadAt(head[:4], 0); err != nil {
		return err
	}
	if _, err := r.ReadAt(tail[:], size-8); err != nil {
		return err
	}
	if string(head[:4]) != "PAR1" || string(tail[4:]) != "PAR1" {
		return errors.New("not a Parquet file: it does not start and end with PAR1")
	}
	n := int64(binary.LittleEndian.Uint32(tail[:4]))
	if n == 0 || n > size-12 {
		return fmt.Errorf("damaged file: its footer length %d does not fit its %d bytes", n, size)
	}
	footer := make([]byte, n)
	if _, err := r.ReadAt(footer, size-8-n); err != nil {
		return err
	}
	used, err := walkThrift(footer, 64<<20+16*n)
	if err != nil {
		return fmt.Errorf("damaged file: footer: %w", err)
	}
	if int64(used) != n {
		return fmt.Errorf("damaged file: footer ends %d bytes before its length says", n-int64(used))
	}
	return nil
}

func checkChunk(cm *format.ColumnMetaData, numRows int64, optional bool, r io.ReaderAt, size int64) error {
	start := cm.DataPageOffset
	if cm.DictionaryPageOffset > 0 && cm.DictionaryPageOffset < start {
		start = cm.DictionaryPageOffset
	}
	end := start + cm.TotalCompressedSize
	// The file starts with 4 magic bytes and ends with the footer, its
	// length and 4 magic bytes.
	if start < 4 || cm.TotalCompressedSize <= 0 || end > size-8 || end < start {
		return fmt.Errorf("column chunk at bytes %d-%d lies outside the file's %d bytes", start, end, size)
	}
	if cm.NumValues != numRows {
		return fmt.Errorf("column chunk has %d values for %d rows", cm.NumValues, numRows)
	}
	chunk := make([]byte, end-start)
	if _, err := r.ReadAt(chunk, start); err != nil {
		return fmt.Errorf("read column chunk: %w", err)
	}
	var (
		compact      thrift.CompactProtocol
		values, rows int64
		dictionary   bool
		firstData    = int64(-1)
	)
	for pos, page := 0, 1; pos < len(chunk); page++ {
		at := start + int64(pos)
		hl, err := walkThrift(chunk[pos:], 1<<20)
		if err != nil {
			return fmt.Errorf("page %d: damaged header: %w", page, err)
		}
		var h format.PageHeader
		if err := thrift.NewDecoder(compact.NewReaderFromBytes(chunk[pos : pos+hl])).Decode(&h); err != nil {
			return fmt.Errorf("page %d: header does not decode: %w", page, err)
		}
		pos += hl
		n := int(h.CompressedPageSize)
		switch {
		case h.CompressedPageSize < 0 || n > len(chunk)-pos || n > maxPageSize:
			return fmt.Errorf("page %d: size %d overruns its column chunk", page, h.CompressedPageSize)
		case h.UncompressedPageSize < 0 || h.UncompressedPageSize > maxPageSize:
			return fmt.Errorf("page %d: impossible uncompressed size %d", page, h.UncompressedPageSize)
		case h.CRC == 0:
			return fmt.Errorf("page %d has no checksum", page)
		case uint32(h.CRC) != crc32.ChecksumIEEE(chunk[pos:pos+n]):
			return fmt.Errorf("page %d: checksum does not match its bytes", page)
		}
		pos += n
		switch h.Type {
		case format.DictionaryPage:
			d := h.DictionaryPageHeader
			if !d.Valid || page != 1 || d.V.NumValues < 0 || int64(d.V.NumValues) > numRows || d.V.Encoding != format.Plain && d.V.Encoding != format.PlainDictionary {
				return fmt.Errorf("page %d: malformed dictionary page header", page)
			}
			if at != cm.DictionaryPageOffset {
				return fmt.Errorf("the dictionary page is at byte %d, the footer says %d", at, cm.DictionaryPageOffset)
			}
			dictionary = true
		case format.DataPageV2:
			d := h.DataPageHeaderV2
			switch {
			case !d.Valid:
				return fmt.Errorf("page %d: data page without its header", page)
			case d.V.NumValues < 0 || d.V.NumRows != d.V.NumValues || d.V.NumNulls < 0 || d.V.NumNulls > d.V.NumValues:
				return fmt.Errorf("page %d: inconsistent counts (%d values, %d rows, %d nulls)", page, d.V.NumValues, d.V.NumRows, d.V.NumNulls)
			case d.V.RepetitionLevelsByteLength != 0 || d.V.DefinitionLevelsByteLength < 0 || int(d.V.DefinitionLevelsByteLength) > n:
				return fmt.Errorf("page %d: impossible level lengths", page)
			case !optional && (d.V.NumNulls != 0 || d.V.DefinitionLevelsByteLength != 0):
				return fmt.Errorf("page %d: nulls in a required column", page)
			case optional && d.V.NumValues > 0 && d.V.DefinitionLevelsByteLength == 0:
				return fmt.Errorf("page %d: optional column without definition levels", page)
			}
			if err := checkEncoding(d.V.Encoding, dictionary); err != nil {
				return fmt.Errorf("page %d: %w", page, err)
			}
			values += int64(d.V.NumValues)
			rows += int64(d.V.NumRows)
		case format.DataPage:
			d := h.DataPageHeader
			if !d.Valid || d.V.NumValues < 0 {
				return fmt.Errorf("page %d: malformed data page header", page)
			}
			if err := checkEncoding(d.V.Encoding, dictionary); err != nil {
				return fmt.Errorf("page %d: %w", page, err)
			}
			values += int64(d.V.NumValues)
			rows += int64(d.V.NumValues)
		default:
			return fmt.Errorf("page %d: unexpected page type %v", page, h.Type)
		}
		if firstData < 0 && h.Type != format.DictionaryPage {
			firstData = at
		}
	}
	if firstData != cm.DataPageOffset {
		return fmt.Errorf("the first data page is at byte %d, the footer says %d", firstData, cm.DataPageOffset)
	}
	if cm.DictionaryPageOffset > 0 && !dictionary {
		return fmt.Errorf("the footer names a dictionary page at byte %d, there is none", cm.DictionaryPageOffset)
	}
	if values != numRows || rows != numRows {
		return fmt.Errorf("pages hold %d values in %d rows, the row group has %d rows", values, rows, numRows)
	}
	return nil
}

func checkEncoding(e format.Encoding, dictionary bool) error {
	switch e {
	case format.Plain, format.DeltaBinaryPacked, format.DeltaLengthByteArray, format.DeltaByteArray:
		return nil
	case format.RLEDictionary, format.PlainDictionary:
		if dictionary {
			return nil
		}
		return fmt.Errorf("dictionary-encoded page without a dictionary")
	}
	return fmt.Errorf("unexpected encoding %v", e)
}
