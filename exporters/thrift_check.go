package exporters

import (
	"errors"
	"fmt"
)

// Parquet's footer and page headers are Thrift compact-protocol structs, and
// parquet-go's decoder trusts their length fields: a list that claims two
// billion elements is allocated before one is read, which a damaged byte can
// cause and no recover can undo. walkThrift walks a struct without decoding
// it, checking every length against the bytes that are left and bounding
// what decoding it may allocate, so parquet-go only decodes structs that pass.

// Thrift compact-protocol types.
const (
	tBoolTrue  = 1
	tBoolFalse = 2
	tByte      = 3
	tI16       = 4
	tI32       = 5
	tI64       = 6
	tDouble    = 7
	tBinary    = 8
	tList      = 9
	tSet       = 10
	tMap       = 11
	tStruct    = 12
)

const (
	// thriftMaxDepth bounds nesting; Parquet's structs nest a few levels.
	thriftMaxDepth = 32
	// A decoded list element costs at most this much memory: the largest
	// parquet-go format struct is a ColumnChunk of about 560 bytes.
	thriftStructCost = 1024
	thriftOtherCost  = 32
)

var errThriftTruncated = errors.New("struct runs past the end of its bytes")

// thriftWalker walks one struct in b.
type thriftWalker struct {
	b      []byte
	pos    int
	budget int64 // bytes decoding may still allocate for list elements
}

// walkThrift checks the struct at the start of b and returns its length.
// Decoding it may allocate about budget bytes for lists at most.
func walkThrift(b []byte, budget int64) (int, error) {
	w := thriftWalker{b: b, budget: budget}
	if err := w.value(tStruct, 0); err != nil {
		return 0, err
	}
	return w.pos, nil
}

func (w *thriftWalker) byte() (byte, error) {
	if w.pos >= len(w.b) {
		return 0, errThriftTruncated
	}
	c := w.b[w.pos]
	w.pos++
	return c, nil
}

func (w *thriftWalker) varint() (uint64, error) {
	var v uint64
	for shift := 0; shift < 64; shift += 7 {
		c, err := w.byte()
		if err != nil {
			return 0, err
		}
		v |= uint64(c&0x7f) << shift
		if c < 0x80 {
			return v, nil
		}
	}
	return 0, errors.New("varint too long")
}

func (w *thriftWalker) skip(n uint64) error {
	if n > uint64(len(w.b)-w.pos) {
		return errThriftTruncated
	}
	w.pos += int(n)
	return nil
}

// elements checks a list, set or map of n elements: each takes at least one
// byte, and decoding them allocates from the budget.
func (w *thriftWalker) elements(n uint64, typ byte) error {
	if n > uint64(len(w.b)-w.pos) {
		return fmt.Errorf("a list claims %d elements in %d bytes", n, len(w.b)-w.pos)
	}
	cost := int64(thriftOtherCost)
	if typ == tStruct {
		cost = thriftStructCost
	}
	w.budget -= int64(n) * cost
	if w.budget < 0 {
		return errors.New("lists claim more elements than a file of this size can hold")
	}
	return nil
}

func (w *thriftWalker) value(typ byte, depth int) error {
	if depth > thriftMaxDepth {
		return errors.New("structs nest too deep")
	}
	switch typ {
	case tBoolTrue, tBoolFalse, tByte:
		_, err := w.byte()
		return err
	case tI16, tI32, tI64:
		_, err := w.varint()
		return err
	case tDouble:
		return w.skip(8)
	case tBinary:
		n, err := w.varint()
		if err != nil {
			return err
		}
		return w.skip(n)
	case tList, tSet:
		h, err := w.byte()
		if err != nil {
			return err
		}
		n, elem := uint64(h>>4), h&0x0f
		if n == 15 {
			if n, err = w.varint(); err != nil {
				return err
			}
		}
		if err := w.elements(n, elem); err != nil {
			return err
		}
		for range n {
			if err := w.value(elem, depth+1); err != nil {
				return err
			}
		}
		return nil
	case tMap:
		n, err := w.varint()
		if err != nil || n == 0 {
			return err
		}
		kv, err := w.byte()
		if err != nil {
			return err
		}
		if err := w.elements(2*n, tStruct); err != nil {
			return err
		}
		for range n {
			if err := w.value(kv>>4, depth+1); err != nil {
				return err
			}
			if err := w.value(kv&0x0f, depth+1); err != nil {
				return err
			}
		}
		return nil
	case tStruct:
		for {
			h, err := w.byte()
			if err != nil {
				return err
			}
			if h == 0 { // stop
				return nil
			}
			if h>>4 == 0 { // long form: the field id follows
				if _, err := w.varint(); err != nil {
					return err
				}
			}
			if t := h & 0x0f; t != tBoolTrue && t != tBoolFalse { // a bool field is all in its header
				if err := w.value(t, depth+1); err != nil {
					return err
				}
			}
		}
	}
	return fmt.Errorf("unknown thrift type %d", typ)
}
