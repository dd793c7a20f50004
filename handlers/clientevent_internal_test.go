package handlers

import (
	"bytes"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// TestClientEncoder_StrAsMsgpack: str writes every length's string exactly
// as msgpack's EncodeString does, at each format's edges.
func TestClientEncoder_StrAsMsgpack(t *testing.T) {
	for _, n := range []int{0, 1, 31, 32, 255, 256, 65535, 65536, 70000} {
		s := strings.Repeat("é", n/2) + strings.Repeat("x", n%2)
		var want bytes.Buffer
		if err := msgpack.NewEncoder(&want).EncodeString(s); err != nil {
			t.Fatal(err)
		}
		var c clientEncoder
		c.str(s)
		if !bytes.Equal(c.buf.Bytes(), want.Bytes()) {
			t.Errorf("length %d: str wrote % x..., msgpack % x...", len(s), head(c.buf.Bytes()), head(want.Bytes()))
		}
	}
}

func head(b []byte) []byte { return b[:min(len(b), 8)] }
