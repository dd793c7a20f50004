package handlers

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/scrollback/scrollback/bus"
)

// rawJSON is a reply already in JSON; the bridge writes it as it is.
type rawJSON []byte

// replyJSON turns a MessagePack reply from the service into JSON in one
// pass, without building maps: the bridge's /messages replies are the
// bulk of its work, and decoding them into map[string]any only to
// marshal them again cost more than the rest of the request. The input
// is checked with bus.Check first (sizes, depth, string keys, no binary or
// extension types), so the walk below trusts its lengths.
func replyJSON(data []byte) (rawJSON, error) {
	if err := bus.Check(data, bus.DefaultLimits); err != nil {
		return nil, err
	}
	out, rest, err := appendJSON(make([]byte, 0, len(data)+len(data)/4+64), data)
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, errors.New("msgpack: trailing bytes after the reply")
	}
	return out, nil
}

var errTruncated = errors.New("msgpack: truncated value")

// appendJSON appends the JSON form of the MessagePack value at the start
// of src and returns what follows it. JSON's output follows
// encoding/json's (the same number formats and string escapes, without
// HTML escaping); object keys keep their MessagePack order.
func appendJSON(dst, src []byte) ([]byte, []byte, error) {
	if len(src) == 0 {
		return dst, src, errTruncated
	}
	c := src[0]
	src = src[1:]
	switch {
	case c <= 0x7f:
		return strconv.AppendInt(dst, int64(c), 10), src, nil
	case c >= 0xe0:
		return strconv.AppendInt(dst, int64(int8(c)), 10), src, nil
	case c >= 0x80 && c <= 0x8f:
		return appendObject(dst, src, int(c&0x0f))
	case c >= 0x90 && c <= 0x9f:
		return appendArray(dst, src, int(c&0x0f))
	case c >= 0xa0 && c <= 0xbf:
		return appendStr(dst, src, int(c&0x1f))
	}
	switch c {
	case 0xc0:
		return append(dst, "null"...), src, nil
	case 0xc2:
		return append(dst, "false"...), src, nil
	case 0xc3:
		return append(dst, "true"...), src, nil
	case 0xca:
		if len(src) < 4 {
			return dst, src, errTruncated
		}
		// As the map decoder did: a float32 widened to float64.
		f := math.Float32frombits(binary.BigEndian.Uint32(src))
		b, err := appendFloat(dst, float64(f))
		return b, src[4:], err
	case 0xcb:
		if len(src) < 8 {
			return dst, src, errTruncated
		}
		b, err := appendFloat(dst, math.Float64frombits(binary.BigEndian.Uint64(src)))
		return b, src[8:], err
	case 0xcc, 0xcd, 0xce, 0xcf:
		n := 1 << (c - 0xcc)
		if len(src) < n {
			return dst, src, errTruncated
		}
		return strconv.AppendUint(dst, uintN(src, n), 10), src[n:], nil
	case 0xd0, 0xd1, 0xd2, 0xd3:
		n := 1 << (c - 0xd0)
		if len(src) < n {
			return dst, src, errTruncated
		}
		v := uintN(src, n)
		var i int64
		switch n {
		case 1:
			i = int64(int8(v))
		case 2:
			i = int64(int16(v))
		case 4:
			i = int64(int32(v))
		default:
			i = int64(v)
		}
		return strconv.AppendInt(dst, i, 10), src[n:], nil
	case 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf:
		n := 4 // str32, array32, map32
		switch c {
		case 0xd9:
			n = 1
		case 0xda, 0xdc, 0xde:
			n = 2
		}
		if len(src) < n {
			return dst, src, errTruncated
		}
		l := int(uintN(src, n))
		src = src[n:]
		switch c {
		case 0xd9, 0xda, 0xdb:
			return appendStr(dst, src, l)
		case 0xdc, 0xdd:
			return appendArray(dst, src, l)
		default:
			return appendObject(dst, src, l)
		}
	}
	return dst, src, fmt.Errorf("msgpack: type 0x%02x has no JSON form", c)
}

func uintN(b []byte, n int) uint64 {
	switch n {
	case 1:
		return uint64(b[0])
	case 2:
		return uint64(binary.BigEndian.Uint16(b))
	case 4:
		return uint64(binary.BigEndian.Uint32(b))
	}
	return binary.BigEndian.Uint64(b)
}

func appendArray(dst, src []byte, n int) ([]byte, []byte, error) {
	dst = append(dst, '[')
	var err error
	for i := range n {
		if i > 0 {
			dst = append(dst, ',')
		}
		if dst, src, err = appendJSON(dst, src); err != nil {
			return dst, src, err
		}
	}
	return append(dst, ']'), src, nil
}

func appendObject(dst, src []byte, n int) ([]byte, []byte, error) {
	dst = append(dst, '{')
	var err error
	for i := range n {
		if i > 0 {
			dst = append(dst, ',')
		}
		if len(src) == 0 {
			return dst, src, errTruncated
		}
		if c := src[0]; !(c >= 0xa0 && c <= 0xbf || c >= 0xd9 && c <= 0xdb) {
			return dst, src, errors.New("msgpack: a map key that is not a string")
		}
		if dst, src, err = appendJSON(dst, src); err != nil {
			return dst, src, err
		}
		dst = append(dst, ':')
		if dst, src, err = appendJSON(dst, src); err != nil {
			return dst, src, err
		}
	}
	return append(dst, '}'), src, nil
}

const hexDigits = "0123456789abcdef"

// appendStr writes n bytes of src as a JSON string, escaped as
// encoding/json does with HTML escaping off: quotes, backslashes, control
// characters, U+2028 and U+2029; invalid UTF-8 becomes U+FFFD.
func appendStr(dst, src []byte, n int) ([]byte, []byte, error) {
	if len(src) < n {
		return dst, src, errTruncated
	}
	s := src[:n]
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"'), src[n:], nil
}

// appendFloat formats like encoding/json: shortest representation,
// exponent form below 1e-6 and from 1e21 on, "e-07" written "e-7".
func appendFloat(dst []byte, f float64) ([]byte, error) {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return dst, fmt.Errorf("msgpack: %v has no JSON form", f)
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	dst = strconv.AppendFloat(dst, f, format, -1, 64)
	if format == 'e' {
		if n := len(dst); n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
	}
	return dst, nil
}
