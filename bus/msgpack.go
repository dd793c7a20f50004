package bus

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/vmihailenco/msgpack/v5"
)

// Limits bound what one MessagePack payload may make the decoder build.
// msgpack v5.4.1 trusts the length prefixes of arrays, maps and strings and
// allocates them up front (vmihailenco/msgpack issue 401: an 8-byte input
// asked for 6.8 GB), so every payload from the bus is walked by Check
// before it reaches the decoder.
type Limits struct {
	MaxBytes    int // whole payload
	MaxDepth    int // nesting of maps and arrays
	MaxElements int // total number of values
}

// DefaultLimits apply to every payload on the bus: the server's max_payload
// of 8 MiB, nesting as deep as Matrix allows in practice, and at most one
// million values.
var DefaultLimits = Limits{MaxBytes: 8 << 20, MaxDepth: 100, MaxElements: 1 << 20}

// RequestLimits apply to the requests the service answers (sb.api.*).
// The decoder builds up to about 64 bytes of Go values for each value of
// input (1 MiB of empty maps made 63 MB), so a request may hold at most
// 256k values (about 16 MB of Go values), against a million on the rest
// of the bus. Its size is the bus's: a page request carries the reader's
// whole ignore list (30k user IDs is about 1 MB). The HTTP bridge holds a
// JSON body and a /messages filter to the same count of values, so that
// its requests stay within it and an admin is told in terms of the JSON
// they sent.
var RequestLimits = Limits{MaxBytes: DefaultLimits.MaxBytes, MaxDepth: 100, MaxElements: 256 << 10}

// Errors of the MessagePack checker.
var (
	// ErrNotMap: the payload is not a single MessagePack map (the empty
	// payload included).
	ErrNotMap = errors.New("payload is not a MessagePack map")
	// ErrBadMsgpack: the payload is not well-formed, or uses a type that
	// has no JSON equivalent (binary, extensions, non-string map keys).
	ErrBadMsgpack = errors.New("invalid MessagePack")
	// ErrTooLarge: the payload exceeds Limits. Each of the three errors
	// below, which name the limit, is an ErrTooLarge too.
	ErrTooLarge = errors.New("payload exceeds size limits")
	// ErrTooManyBytes: the payload is longer than Limits.MaxBytes.
	ErrTooManyBytes = fmt.Errorf("%w: too many bytes", ErrTooLarge)
	// ErrTooDeep: maps and arrays nest deeper than Limits.MaxDepth.
	ErrTooDeep = fmt.Errorf("%w: nested too deeply", ErrTooLarge)
	// ErrTooManyValues: the payload holds more than Limits.MaxElements
	// values, each map key counting as one.
	ErrTooManyValues = fmt.Errorf("%w: too many values", ErrTooLarge)
)

// Check walks data and verifies that it is exactly one MessagePack map of
// JSON-equivalent values whose every length prefix is backed by enough
// bytes, within lim. It allocates nothing.
func Check(data []byte, lim Limits) error {
	if len(data) == 0 {
		return ErrNotMap
	}
	if len(data) > lim.MaxBytes {
		return fmt.Errorf("%w: %d, limit %d", ErrTooManyBytes, len(data), lim.MaxBytes)
	}
	c := checker{data: data, lim: lim}
	b := data[0]
	if !(b >= 0x80 && b <= 0x8f) && b != 0xde && b != 0xdf {
		return ErrNotMap
	}
	if err := c.value(0); err != nil {
		return err
	}
	if c.pos != len(data) {
		return fmt.Errorf("%w: %d trailing bytes", ErrBadMsgpack, len(data)-c.pos)
	}
	return nil
}

type checker struct {
	data  []byte
	pos   int
	elems int
	lim   Limits
}

func (c *checker) need(n int) error {
	if n < 0 || len(c.data)-c.pos < n {
		return fmt.Errorf("%w: truncated at byte %d", ErrBadMsgpack, c.pos)
	}
	return nil
}

func (c *checker) uint(n int) (int, error) {
	if err := c.need(n); err != nil {
		return 0, err
	}
	var v uint64
	switch n {
	case 1:
		v = uint64(c.data[c.pos])
	case 2:
		v = uint64(binary.BigEndian.Uint16(c.data[c.pos:]))
	case 4:
		v = uint64(binary.BigEndian.Uint32(c.data[c.pos:]))
	}
	c.pos += n
	if v > math.MaxInt32 {
		return 0, fmt.Errorf("%w: length %d", ErrTooLarge, v)
	}
	return int(v), nil
}

func (c *checker) value(depth int) error {
	if depth > c.lim.MaxDepth {
		return fmt.Errorf("%w: deeper than %d", ErrTooDeep, c.lim.MaxDepth)
	}
	c.elems++
	if c.elems > c.lim.MaxElements {
		return fmt.Errorf("%w: more than %d", ErrTooManyValues, c.lim.MaxElements)
	}
	if err := c.need(1); err != nil {
		return err
	}
	b := c.data[c.pos]
	c.pos++
	switch {
	case b <= 0x7f || b >= 0xe0, b == 0xc0, b == 0xc2, b == 0xc3:
		return nil
	case b >= 0x80 && b <= 0x8f:
		return c.mapBody(int(b&0x0f), depth)
	case b >= 0x90 && b <= 0x9f:
		return c.arrayBody(int(b&0x0f), depth)
	case b >= 0xa0 && b <= 0xbf:
		return c.skip(int(b & 0x1f))
	}
	switch b {
	case 0xca:
		return c.skip(4)
	case 0xcb:
		return c.skip(8)
	case 0xcc, 0xd0:
		return c.skip(1)
	case 0xcd, 0xd1:
		return c.skip(2)
	case 0xce, 0xd2:
		return c.skip(4)
	case 0xcf, 0xd3:
		return c.skip(8)
	case 0xd9, 0xda, 0xdb:
		n, err := c.uint(1 << (b - 0xd9))
		if err != nil {
			return err
		}
		return c.skip(n)
	case 0xdc, 0xdd:
		n, err := c.uint(2 << (b - 0xdc))
		if err != nil {
			return err
		}
		return c.arrayBody(n, depth)
	case 0xde, 0xdf:
		n, err := c.uint(2 << (b - 0xde))
		if err != nil {
			return err
		}
		return c.mapBody(n, depth)
	}
	return fmt.Errorf("%w: type 0x%02x at byte %d has no JSON equivalent", ErrBadMsgpack, b, c.pos-1)
}

func (c *checker) skip(n int) error {
	if err := c.need(n); err != nil {
		return err
	}
	c.pos += n
	return nil
}

func (c *checker) arrayBody(n, depth int) error {
	// Every element takes at least one byte: a length larger than what is
	// left is a lie, caught before the decoder allocates for it.
	if err := c.need(n); err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		if err := c.value(depth + 1); err != nil {
			return err
		}
	}
	return nil
}

func (c *checker) mapBody(n, depth int) error {
	if n > (len(c.data)-c.pos)/2 {
		return fmt.Errorf("%w: map of %d entries in %d bytes", ErrBadMsgpack, n, len(c.data)-c.pos)
	}
	for i := 0; i < n; i++ {
		if err := c.need(1); err != nil {
			return err
		}
		k := c.data[c.pos]
		if !(k >= 0xa0 && k <= 0xbf) && k != 0xd9 && k != 0xda && k != 0xdb {
			return fmt.Errorf("%w: map key at byte %d is not a string", ErrBadMsgpack, c.pos)
		}
		if err := c.value(depth + 1); err != nil {
			return err
		}
		if err := c.value(depth + 1); err != nil {
			return err
		}
	}
	return nil
}

// DecodeMap checks data against lim and decodes it into a map of
// JSON-equivalent values, the types msgpack's loose interface decoding
// gives: integers as int64 (uint64 for the unsigned formats), floats as
// float64, strings, bools, nil, []any and map[string]any.
//
// It decodes by hand what Check accepted (see decoder): every event of the
// log passes here, and msgpack's reflective decoding of them was a fifth
// of the projector's CPU in a catch-up and most of its allocations.
func DecodeMap(data []byte, lim Limits) (m map[string]any, err error) {
	if err := Check(data, lim); err != nil {
		return nil, err
	}
	// The decoder panics only if it and Check disagree on what is valid
	// (a bug): the input is then refused like any other bad payload, so
	// a log message becomes a dead letter instead of a crash loop.
	defer func() {
		if r := recover(); r != nil {
			m, err = nil, fmt.Errorf("%w: %v", ErrBadMsgpack, r)
		}
	}()
	d := decoder{data: data}
	return d.value().(map[string]any), nil
}

// decoder decodes a payload that Check accepted, so it trusts every length
// prefix and type byte (it panics on anything else). Each string is a
// copy of its own: strings sharing one copy of the payload took half the
// allocations, but a caller that kept a few small strings of a big
// payload kept all of it (the bench's page tokens held 765 MB of pages
// at the peak of a 10M-event run).
type decoder struct {
	data []byte
	pos  int
}

func (d *decoder) next(n int) []byte {
	b := d.data[d.pos : d.pos+n]
	d.pos += n
	return b
}

// size reads an n-byte big-endian length.
func (d *decoder) size(n int) int {
	b := d.next(n)
	switch n {
	case 1:
		return int(b[0])
	case 2:
		return int(binary.BigEndian.Uint16(b))
	}
	return int(binary.BigEndian.Uint32(b))
}

func (d *decoder) str(n int) string {
	s := string(d.data[d.pos : d.pos+n])
	d.pos += n
	return s
}

func (d *decoder) value() any {
	b := d.data[d.pos]
	d.pos++
	switch {
	case b <= 0x7f:
		return int64(b)
	case b >= 0xe0:
		return int64(int8(b))
	case b <= 0x8f:
		return d.mapBody(int(b & 0x0f))
	case b <= 0x9f:
		return d.arrayBody(int(b & 0x0f))
	case b <= 0xbf:
		return d.str(int(b & 0x1f))
	}
	switch b {
	case 0xc0:
		return nil
	case 0xc2:
		return false
	case 0xc3:
		return true
	case 0xca:
		return float64(math.Float32frombits(binary.BigEndian.Uint32(d.next(4))))
	case 0xcb:
		return math.Float64frombits(binary.BigEndian.Uint64(d.next(8)))
	case 0xcc:
		return uint64(d.next(1)[0])
	case 0xcd:
		return uint64(binary.BigEndian.Uint16(d.next(2)))
	case 0xce:
		return uint64(binary.BigEndian.Uint32(d.next(4)))
	case 0xcf:
		return binary.BigEndian.Uint64(d.next(8))
	case 0xd0:
		return int64(int8(d.next(1)[0]))
	case 0xd1:
		return int64(int16(binary.BigEndian.Uint16(d.next(2))))
	case 0xd2:
		return int64(int32(binary.BigEndian.Uint32(d.next(4))))
	case 0xd3:
		return int64(binary.BigEndian.Uint64(d.next(8)))
	case 0xd9, 0xda, 0xdb:
		return d.str(d.size(1 << (b - 0xd9)))
	case 0xdc, 0xdd:
		return d.arrayBody(d.size(2 << (b - 0xdc)))
	case 0xde, 0xdf:
		return d.mapBody(d.size(2 << (b - 0xde)))
	}
	panic(fmt.Sprintf("bus: decoder met type 0x%02x, which Check rejects", b))
}

func (d *decoder) arrayBody(n int) []any {
	a := make([]any, n)
	for i := range a {
		a[i] = d.value()
	}
	return a
}

func (d *decoder) mapBody(n int) map[string]any {
	m := make(map[string]any, n)
	for range n {
		b := d.data[d.pos]
		d.pos++
		var k string
		if b <= 0xbf {
			k = d.str(int(b & 0x1f))
		} else {
			k = d.str(d.size(1 << (b - 0xd9)))
		}
		m[k] = d.value()
	}
	return m
}

// Encode marshals v as MessagePack.
func Encode(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.SetCustomStructTag("msgpack")
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
